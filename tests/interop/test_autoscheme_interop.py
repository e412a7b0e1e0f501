"""AutoScheme outputs whose plan really mixes schemes, loaded by real third-party loaders.

A tiny random Llama is quantized once with ``scheme=AutoScheme(...)`` (optimised RTN) and the same codes
are written as auto_round (``extra_config``) and auto_gptq (GPTQ ``dynamic``); a k-quant-sized one as a
GGUF file with per-tensor types. transformers' own GPTQ path (optimum) cannot hold a GPTQ mix: an xfail records it. Each loader must build every layer with the bits and group size the
plan chose and give the logits of our in-memory quantized model (tolerances as in test_our_exports.py
and the GGUF verify tests: fp16 loaders, llama.cpp's 8-bit activations).
"""

from __future__ import annotations

import copy

import pytest
import torch

from signround import AutoRound, AutoScheme
from signround.eval.metrics import compare_logits
from signround.testing import tiny_model
from tests.helpers import logits
from tests.interop.common import assert_close, byte_tokenizer, hf_logits, needs

pytestmark = pytest.mark.interop

OPTIONS = ("W2A16G64", "W4A16", "W8A16")
FIXED = "model.layers.1.self_attn.o_proj"  # a user layer_config entry: kept, and subtracted from the budget


def _chosen(plan) -> dict[str, tuple[int, int]]:
    """Quantized layer -> (bits, group_size) as the plan holds them."""
    return {p.name: (p.scheme.bits, p.scheme.group_size) for p in plan.quantized()}


@pytest.fixture(scope="module")
def mixed_int(tmp_path_factory):
    """(in-memory quantized model, calibration rows, plan, {format: output dir}) for one AutoScheme run."""
    ids = torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(0))
    ar = AutoRound(tiny_model("llama"), byte_tokenizer(), scheme=AutoScheme(avg_bits=3.5, options=OPTIONS), iters=0,
                   dataset=ids, nsamples=8, seqlen=32, layer_config={FIXED: "W8A16"}, show_progress=False)
    model, _ = ar.quantize(formats="auto_round,auto_gptq")
    record = ar.settings()["auto_scheme"]
    assert len(set(record["layers"].values())) >= 2, record["layers"]  # AutoScheme itself mixed its options
    assert len(set(_chosen(ar._plan).values())) == 3, _chosen(ar._plan)  # 2-bit g64, 4-bit g128, 8-bit g128
    assert record["achieved_avg_bits"] <= 3.5
    outs = ar.save_quantized(tmp_path_factory.mktemp("autoscheme"), "auto_round,auto_gptq")
    return model, ids, ar._plan, dict(zip(("auto_round", "auto_gptq"), outs))


@needs("auto_round")
def test_auto_round_extra_config_mix_in_transformers_auto_round(mixed_int):
    from transformers import AutoModelForCausalLM

    model, ids, plan, outs = mixed_int
    loaded = AutoModelForCausalLM.from_pretrained(outs["auto_round"], device_map="cpu").eval()
    built = {n: (m.bits, m.group_size) for n, m in loaded.named_modules() if type(m).__name__ == "QuantLinear"}
    assert built == _chosen(plan)  # every layer with the bits and group size AutoScheme chose
    got, _ = hf_logits(outs["auto_round"], ids)
    assert_close(got, logits(model, ids), rel_max=0.005)


@needs("gptqmodel")
def test_auto_gptq_dynamic_mix_in_gptqmodel(mixed_int):
    from gptqmodel import GPTQModel

    model, ids, plan, outs = mixed_int
    loaded = GPTQModel.load(str(outs["auto_gptq"]), device="cpu").model.eval()
    built = {n: (m.bits, m.group_size) for n, m in loaded.named_modules() if hasattr(m, "bits") and "Linear" in
             type(m).__name__}
    assert built == _chosen(plan)  # the "+:" dynamic overrides honoured per layer
    assert_close(logits(loaded, ids), logits(model, ids), rel_max=0.015)


@needs("auto_round")
def test_auto_gptq_dynamic_mix_in_transformers_auto_round(mixed_int):
    from transformers import AutoRoundConfig

    model, ids, plan, outs = mixed_int
    got, kinds = hf_logits(outs["auto_gptq"], ids, quantization_config=AutoRoundConfig(backend="torch"))
    assert "QuantLinear" in kinds, kinds
    assert_close(got, logits(model, ids), rel_max=0.005)


@needs("optimum", "gptqmodel")
@pytest.mark.xfail(strict=True, raises=RuntimeError, reason=(
    "transformers' GPTQ path (optimum 2.3 GPTQQuantizer) drops the GPTQModel `dynamic` overrides and builds every "
    "layer with the base bits/group_size: loading fails on the size mismatch of the other layers' tensors (loudly, "
    "never silently). No GPTQ v1 config can express mixed bits for it; load with GPTQModel.load or auto-round"))
def test_auto_gptq_dynamic_mix_in_transformers_optimum(mixed_int):
    _, ids, _, outs = mixed_int
    hf_logits(outs["auto_gptq"], ids)


@needs("llama_cpp", "gguf")
def test_gguf_per_tensor_types_mix_in_llama_cpp(tmp_path):
    from gguf import GGUFReader

    from signround.export.gguf import load_gguf_state_dict
    from signround.formats.gguf_tensors import model_tensors
    from signround.verify_gguf import GGUFTolerances, llama_cpp_logits
    from tests.gguf.gguf_testlib import tiny_arch_model, tiny_tokenizer

    model = tiny_arch_model("llama")  # widths 256/512: every k-quant fits, no shape fallback
    skeleton = copy.deepcopy(model)
    ids = torch.randint(3, 512, (8, 32), generator=torch.Generator().manual_seed(0))
    auto = AutoScheme(avg_bits=4.0, options=("GGUF:Q2_K_S", "GGUF:Q4_K_S", "GGUF:Q6_K"))
    ar = AutoRound(model, tiny_tokenizer(), scheme=auto, iters=0, dataset=ids, nsamples=4, seqlen=32,
                   show_progress=False)
    quantized, _ = ar.quantize(formats="gguf:q2_k_s")
    (folder,) = ar.save_quantized(tmp_path, "gguf:q2_k_s")
    path = next(folder.glob("*.gguf"))

    chosen = {p.name: p.scheme.ggml_type for p in ar._plan.quantized()}  # the 14 Linear layers and lm_head
    want = {s.gguf_name: chosen[s.hf_name.removesuffix(".weight")] for s in model_tensors(skeleton)
            if s.hf_name.removesuffix(".weight") in chosen}
    assert len(want) == len(chosen) == 15
    types = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
    assert {n: types[n] for n in want} == want and len(set(want.values())) == 3, types  # Q2_K, Q4_K, Q6_K
    assert ar.settings()["auto_scheme"]["achieved_avg_bits"] <= 4.0

    # The file holds exactly the in-memory model's Linear weights; the embedding is the one tensor the mix
    # quantizes (q2_k_s: token_embd in Q2_K) that the in-memory model keeps in float, so it is taken from the file.
    state = load_gguf_state_dict(path, skeleton)
    ours = quantized.state_dict()
    for name, tensor in state.items():
        if name != "model.embed_tokens.weight":
            assert torch.equal(tensor, ours[name].float()), name
    reference = copy.deepcopy(quantized)
    reference.model.embed_tokens.weight.data.copy_(state["model.embed_tokens.weight"])
    tol = GGUFTolerances()  # llama.cpp vs our decoding, as `signround verify` (8-bit activations in llama.cpp)
    argmax, rel, kl = compare_logits(llama_cpp_logits(path, ids), logits(reference, ids))
    assert rel <= tol.engine_rel_max and kl <= tol.engine_kl_max and argmax >= tol.engine_argmax_min, (argmax, rel, kl)
