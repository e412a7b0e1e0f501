"""auto_gptq export: GPTQ v1 tensors and config, read back exactly, checked against an independent decoder."""

import json

import pytest
import torch
from safetensors.torch import load_file

from signround.export.auto_gptq import gptq_v1_weight
from signround.formats import Format
from signround.inference.load import load_quantized
from signround.quant.types import QuantizedWeight
from tests.helpers import export_tiny, logits, quantize_tiny

SCHEMES = [
    dict(bits=2, group_size=32, sym=True), dict(bits=3, group_size=64, sym=True), dict(bits=3, group_size=32, sym=False),
    dict(bits=4, group_size=128, sym=True), dict(bits=4, group_size=-1, sym=False), dict(bits=8, group_size=64, sym=False),
]


def _reference_decode(qweight, qzeros, scales, bits, group_size):
    """A plain-Python GPTQ v1 decoder (2/4/8 bits), independent of signround.formats.packing."""
    per = 32 // bits
    mask = 2**bits - 1
    k_dim, n_dim = qweight.shape[0] * per, qweight.shape[1]
    w = torch.empty(n_dim, k_dim)
    q = qweight.to(torch.int64) & 0xFFFFFFFF
    z = qzeros.to(torch.int64) & 0xFFFFFFFF
    for k in range(k_dim):
        code = (q[k // per] >> (bits * (k % per))) & mask  # (N,)
        g = k // group_size
        zero = torch.stack([(z[g, n // per] >> (bits * (n % per))) & mask for n in range(n_dim)]) + 1
        w[:, k] = scales[g].float() * (code - zero).float()
    return w


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: f"w{s['bits']}g{s['group_size']}{'' if s['sym'] else 'a'}")
def test_round_trip_codes_and_logits(scheme, tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, scheme, iters=0, formats=(Format.AUTO_GPTQ,))
    out = export_tiny(model, plan, result, Format.AUTO_GPTQ, tmp_path / "q")
    loaded = load_quantized(out, keep_codes=True)
    for name, qw in result.weights.items():
        back = loaded.get_submodule(name).quantized
        assert torch.equal(back.dequantize(), qw.dequantize()), name
        if not bool((qw.zero == 0).any()):  # zero-0 groups are stored shifted (same values, codes + 1)
            assert torch.equal(back.codes, qw.codes) and torch.equal(back.zero, qw.zero), name
    assert torch.equal(logits(loaded, calib_ids), logits(model, calib_ids))


def test_layout_matches_an_independent_decoder(tiny, calib_ids, tmp_path):
    model = tiny("qwen2")  # q/k/v carry biases
    plan, result = quantize_tiny(model, calib_ids, dict(bits=4, group_size=64, sym=False), iters=0,
                                 formats=(Format.AUTO_GPTQ,))
    out = export_tiny(model, plan, result, Format.AUTO_GPTQ, tmp_path / "q")
    t = load_file(str(out / "model.safetensors"))
    name = "model.layers.0.self_attn.k_proj"
    qw = gptq_v1_weight(result.weights[name], name)
    assert t[f"{name}.qweight"].shape == (128 * 4 // 32, 64) and t[f"{name}.qweight"].dtype == torch.int32
    assert t[f"{name}.qzeros"].shape == (2, 64 * 4 // 32) and t[f"{name}.scales"].dtype == torch.float16
    assert torch.equal(t[f"{name}.g_idx"], torch.arange(128, dtype=torch.int32) // 64)
    assert t[f"{name}.bias"].dtype == torch.float16 and f"{name}.weight" not in t
    ref = _reference_decode(t[f"{name}.qweight"], t[f"{name}.qzeros"], t[f"{name}.scales"], 4, 64)
    assert torch.equal(ref, qw.dequantize())


def test_config_dynamic_for_mixed_bits_float_layers_and_lm_head(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, "W4A16", iters=0, formats=(Format.AUTO_GPTQ,), quant_lm_head=True,
                                 layer_config={"mlp.down_proj": {"bits": 8}, "model.layers.1.self_attn": {"bits": 16}})
    out = export_tiny(model, plan, result, Format.AUTO_GPTQ, tmp_path / "q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq" and qc["desc_act"] is False
    assert (qc["bits"], qc["group_size"], qc["sym"], qc["lm_head"]) == (4, 128, True, True)
    dyn = qc["dynamic"]
    assert dyn[r"+:^model\.layers\.0\.mlp\.down_proj$"] == {"bits": 8, "group_size": 128, "sym": True}
    assert dyn[r"-:^model\.layers\.1\.self_attn\.q_proj$"] == {}
    assert not any("layers.0.self_attn" in k for k in dyn)
    t = load_file(str(out / "model.safetensors"))
    assert "lm_head.qweight" in t and "model.layers.1.self_attn.q_proj.weight" in t
    assert t["model.layers.0.mlp.down_proj.qweight"].shape == (256 * 8 // 32, 128)
    assert bool((t["model.layers.0.self_attn.q_proj.qzeros"] == 0x77777777).all())  # sym 4-bit: zero 8 stored as 7
    loaded = load_quantized(out)
    assert torch.equal(logits(loaded, calib_ids), logits(model, calib_ids))


def _qw(codes, zero, bits=4):
    out_f, in_f = codes.shape
    return QuantizedWeight(codes=codes, scale=torch.full((out_f, in_f // 32), 0.5), zero=zero, bits=bits, group_size=32,
                           sym=False)


def test_zero_point_zero_is_stored_as_the_same_values_or_refused():
    codes = torch.randint(0, 14, (4, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    zero = torch.full((4, 2), 5, dtype=torch.uint8)
    zero[1, 0] = 0
    shifted = gptq_v1_weight(_qw(codes, zero), "layer.x")
    assert int(shifted.zero.min()) == 1 and torch.equal(shifted.dequantize(), _qw(codes, zero).dequantize())
    assert torch.equal(shifted.codes[1, :32], codes[1, :32] + 1) and torch.equal(shifted.codes[0], codes[0])
    codes[1, 3] = 15  # the top code leaves no room to shift that group
    with pytest.raises(ValueError, match=r"layer layer.x has 1 of 8 groups with zero point 0, and 1 of them use the top "
                                         r"code 15.*format auto_round"):
        gptq_v1_weight(_qw(codes, zero), "layer.x")


def test_quantized_layer_outside_the_blocks_is_refused(tiny):
    from signround.export.auto_gptq import gptq_quantization_config
    from signround.model.arch import arch_facts
    from signround.plan import LayerPlan, build_plan
    from signround.schemes import resolve_scheme

    model = tiny("llama")
    scheme = resolve_scheme("W4A16")
    plan = build_plan(model, arch_facts(model), scheme)
    plan.layers["model.extra_proj"] = LayerPlan("model.extra_proj", (128, 128), scheme, "test", None)
    with pytest.raises(ValueError, match="model.extra_proj is outside the blocks"):
        gptq_quantization_config(plan)
