"""auto_awq export: AWQ GEMM tensors (output-dim packing, interleaved nibbles, raw zeros) and config."""

import json

import pytest
import torch
from safetensors.torch import load_file

from signround.formats.awq_packing import AWQ_ORDER, pack_awq, unpack_awq
from signround.formats import Format
from signround.inference.load import load_quantized
from tests.helpers import export_tiny, logits, quantize_tiny


def test_pack_round_trip_and_nibble_order():
    values = torch.randint(0, 16, (3, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unpack_awq(pack_awq(values)), values)
    one = torch.zeros(1, 8, dtype=torch.uint8)
    one[0, 1] = 0xF  # column 1 lives in nibble 4 (bits 16..19)
    assert int(pack_awq(one)[0, 0]) == 0xF << 16
    assert AWQ_ORDER.index(1) == 4
    with pytest.raises(ValueError, match="width 12 is not a multiple of 8"):
        pack_awq(torch.zeros(1, 12, dtype=torch.uint8))


def _reference_decode(qweight, qzeros, scales, group_size):
    """Independent AWQ decoder: column j of each 8 sits in nibble [0, 4, 1, 5, 2, 6, 3, 7][j]; zeros are raw."""
    nibble_of = [0, 4, 1, 5, 2, 6, 3, 7]
    q = qweight.to(torch.int64) & 0xFFFFFFFF
    z = qzeros.to(torch.int64) & 0xFFFFFFFF
    k_dim, n_dim = q.shape[0], q.shape[1] * 8
    w = torch.empty(n_dim, k_dim)
    for n in range(n_dim):
        shift = 4 * nibble_of[n % 8]
        codes = (q[:, n // 8] >> shift) & 0xF  # (K,)
        zeros = ((z[:, n // 8] >> shift) & 0xF).repeat_interleave(group_size)  # (K,)
        w[n] = scales[:, n].float().repeat_interleave(group_size) * (codes - zeros).float()
    return w


@pytest.mark.parametrize("sym", [True, False])
def test_round_trip_layout_and_config(sym, tiny, calib_ids, tmp_path):
    model = tiny("qwen2")
    plan, result = quantize_tiny(model, calib_ids, dict(bits=4, group_size=64, sym=sym), iters=0,
                                 formats=(Format.AUTO_AWQ,), ignore_layers="model.layers.1.mlp.down_proj")
    out = export_tiny(model, plan, result, Format.AUTO_AWQ, tmp_path / "q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["version"] == "gemm" and qc["bits"] == 4 and qc["group_size"] == 64
    assert qc["zero_point"] is (not sym)
    assert qc["modules_to_not_convert"] == ["lm_head", "model.layers.1.mlp.down_proj"]
    t = load_file(str(out / "model.safetensors"))
    name = "model.layers.0.self_attn.v_proj"
    assert t[f"{name}.qweight"].shape == (128, 64 // 8) and t[f"{name}.qzeros"].shape == (2, 64 // 8)
    assert t[f"{name}.scales"].shape == (2, 64) and t[f"{name}.scales"].dtype == torch.float16
    assert f"{name}.g_idx" not in t and t[f"{name}.bias"].dtype == torch.float16
    if sym:
        assert bool((t[f"{name}.qzeros"] == 0x88888888 - 2**32).all())  # raw zero 8 in every nibble
    ref = _reference_decode(t[f"{name}.qweight"], t[f"{name}.qzeros"], t[f"{name}.scales"], 64)
    assert torch.equal(ref, result.weights[name].dequantize())
    loaded = load_quantized(out, keep_codes=True)
    for layer, qw in result.weights.items():
        back = loaded.get_submodule(layer).quantized
        assert torch.equal(back.codes, qw.codes) and torch.equal(back.zero, qw.zero), layer
    assert torch.equal(logits(loaded, calib_ids), logits(model, calib_ids))


@pytest.mark.parametrize("scheme, message", [
    (dict(bits=3, group_size=128, sym=True), "format auto_awq supports bits \\[4\\], got 3 at layer model.layers.0"),
    (dict(bits=8, group_size=128, sym=False), "format auto_awq supports bits \\[4\\], got 8"),
])
def test_schemes_awq_cannot_hold_fail_in_the_plan(scheme, message, tiny, calib_ids):
    with pytest.raises(ValueError, match=message):
        quantize_tiny(tiny("llama"), calib_ids, scheme, iters=0, formats=(Format.AUTO_AWQ,))


def test_group_size_must_divide_in_features(calib_ids):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(hidden_size=192, intermediate_size=256, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512)).eval()
    with pytest.raises(ValueError, match="in_features 192 is not a multiple of group_size 128 at layer model.layers.0"):
        quantize_tiny(model, calib_ids, "W4A16", iters=0, formats=(Format.AUTO_AWQ,))


@pytest.mark.parametrize("kw, message", [
    (dict(layer_config={"mlp.down_proj": {"group_size": 64}}), "one group_size for the whole model, got \\[64, 128\\]"),
    (dict(scheme=dict(bits=4, group_size=-1, sym=True)), "AWQ needs a positive group_size, got -1"),
])
def test_configs_awq_cannot_express_fail_clearly(kw, message, tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, kw.pop("scheme", "W4A16"), iters=0, **kw)
    with pytest.raises(ValueError, match=message):
        export_tiny(model, plan, result, Format.AUTO_AWQ, tmp_path / "q")
    assert not (tmp_path / "q").exists()
