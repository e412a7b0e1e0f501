"""GGUF options: the chosen ggml types (with llama.cpp's shape fallbacks) are the types in the written file."""

import json

from gguf import GGUFReader

from signround import AutoRound, AutoScheme
from signround.autoscheme.bits import effective_scheme
from signround.schemes import resolve_scheme


def test_gguf_choice_is_written_per_tensor(tiny_model_dir, tmp_path):
    ar = AutoRound(str(tiny_model_dir), scheme=AutoScheme(avg_bits=5.0, options=("GGUF:Q2_K_S", "GGUF:Q4_K_S",
                                                                                   "GGUF:Q6_K")),
                   nsamples=4, seqlen=64, show_progress=False)
    out = ar.quantize_and_save(tmp_path)[0]  # the first option's mix names the default format: gguf:q2_k_s
    auto = json.loads((out / "signround.json").read_text())["settings"]["auto_scheme"]
    assert auto["achieved_avg_bits"] <= 5.0 and len(set(auto["layers"].values())) >= 2
    types = {t.name: t.tensor_type.name for t in GGUFReader(next(out.glob("*.gguf"))).tensors}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    plan = ar._plan
    for layer, option in auto["layers"].items():
        want = effective_scheme(resolve_scheme(option), plan.layers[layer].shape).ggml_type
        if layer == "lm_head":
            assert types["output.weight"] == want
            continue
        b, local = layer.split(".")[2], layer.split(".", 3)[3]
        assert types[f"blk.{b}.{names[local]}.weight"] == want, layer
