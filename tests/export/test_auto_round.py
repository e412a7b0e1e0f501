"""auto_round export: write, read back with our loader, compare logits with the in-memory quantized model."""

import json

import pytest
import torch

from signround.export.auto_round import GPTQ_PACKING, PLAIN_PACKING
from signround.formats import Format
from signround.inference.load import load_quantized
from signround.inference.packed_dequant import DequantOnTheFlyLinear
from tests.helpers import export_tiny, logits, quantize_tiny

ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3", "opt", "gpt2", "gpt_neox"]


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_logits_are_exact_for_every_architecture(arch, tiny, calib_ids, tmp_path):
    model = tiny(arch)
    plan, result = quantize_tiny(model, calib_ids)
    out = export_tiny(model, plan, result, Format.AUTO_ROUND, tmp_path / "q")
    loaded = load_quantized(out)
    n_q = sum(isinstance(m, DequantOnTheFlyLinear) for m in loaded.modules())  # float32: packed, exact
    assert n_q == len(plan.quantized()) > 0
    assert torch.equal(logits(loaded, calib_ids), logits(model, calib_ids))


@pytest.mark.parametrize("scheme", [
    dict(bits=2, group_size=32, sym=True), dict(bits=3, group_size=64, sym=True), dict(bits=3, group_size=32, sym=False),
    dict(bits=4, group_size=-1, sym=False), dict(bits=4, group_size=0, sym=True), dict(bits=8, group_size=128, sym=True),
])
def test_round_trip_codes_are_identical_for_every_scheme(scheme, tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, scheme)
    out = export_tiny(model, plan, result, Format.AUTO_ROUND, tmp_path / "q")
    loaded = load_quantized(out, keep_codes=True)
    for name, qw in result.weights.items():
        back = loaded.get_submodule(name).quantized
        assert torch.equal(back.codes, qw.codes), name
        assert torch.equal(back.zero, qw.zero), name
        assert torch.equal(back.scale, qw.scale), name
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["packing_format"] == (GPTQ_PACKING if scheme["sym"] else PLAIN_PACKING)
    assert cfg["group_size"] == (-1 if scheme["group_size"] in (-1, 0) else scheme["group_size"])


def test_config_and_tensor_layout_match_the_reference(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, layer_config={"mlp.down_proj": {"bits": 8}}, quant_lm_head=True)
    out = export_tiny(model, plan, result, Format.AUTO_ROUND, tmp_path / "q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "auto-round" and qc["bits"] == 4 and qc["group_size"] == 128 and qc["sym"] is True
    assert qc["block_name_to_quantize"] == "model.layers"
    assert qc["extra_config"]["model.layers.0.mlp.down_proj"] == {"bits": 8}
    assert qc["extra_config"]["lm_head"] == {"bits": 4, "group_size": 128, "sym": True, "data_type": "int"}
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        qweight = f.get_tensor("model.layers.0.self_attn.q_proj.qweight")
        qzeros = f.get_tensor("model.layers.0.self_attn.q_proj.qzeros")
        scales = f.get_tensor("model.layers.0.self_attn.q_proj.scales")
        assert "model.layers.0.self_attn.q_proj.weight" not in f.keys()
    assert qweight.shape == (128 * 4 // 32, 128) and qweight.dtype == torch.int32
    assert qzeros.shape == (1, 128 * 4 // 32) and bool((qzeros == 0x77777777).all())  # sym: zero 8 stored as 7
    assert scales.shape == (1, 128) and scales.dtype == torch.float16
    for f in ("signround.json", "config.json"):
        assert (out / f).is_file()


def test_padded_last_group_round_trips(calib_ids, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=192, intermediate_size=320, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512)).eval()
    plan, result = quantize_tiny(model, calib_ids)  # group 128 does not divide 192 or 320
    assert result.weights["model.layers.0.mlp.down_proj"].scale.shape == (192, 3)
    out = export_tiny(model, plan, result, Format.AUTO_ROUND, tmp_path / "q")
    assert torch.equal(logits(load_quantized(out), calib_ids), logits(model, calib_ids))


def test_fake_format_loads_as_a_plain_model(tiny, calib_ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny("qwen2")
    plan, result = quantize_tiny(model, calib_ids, "W2A16G32", formats=(Format.FAKE,))
    out = export_tiny(model, plan, result, Format.FAKE, tmp_path / "f")
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(logits(plain, calib_ids), logits(model, calib_ids))
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
