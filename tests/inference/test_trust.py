"""A damaged checkpoint never loads: every defect is a CheckpointError naming the file and the tensor.

Both load paths are covered: packed (auto_round) and float (fake format, no quantization_config),
which used to go through ``from_pretrained`` and fill what was missing with random weights.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from signround.formats import Format
from signround.inference.checkpoint import CheckpointError
from signround.inference.load import load_quantized
from tests.helpers import export_tiny, logits, quantize_tiny


def _export(model, ids, fmt, folder):
    plan, result = quantize_tiny(model, ids, iters=0, formats=(fmt,))
    return export_tiny(model, plan, result, fmt, folder)


@pytest.fixture
def packed(tiny, calib_ids, tmp_path):
    return _export(tiny("llama"), calib_ids, Format.AUTO_ROUND, tmp_path / "packed")


@pytest.fixture
def fake(tiny, calib_ids, tmp_path):
    return _export(tiny("llama"), calib_ids, Format.FAKE, tmp_path / "fake")


def _edit_tensors(folder, fn):
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def _set(name, value):
    return lambda t: t.update({name: value(t[name]) if callable(value) else value})


def _raises(folder, *parts):
    """load_quantized(folder) fails with a CheckpointError whose message holds every part (file, tensor, why)."""
    with pytest.raises(CheckpointError) as err:
        load_quantized(folder)
    for part in parts:
        assert part in str(err.value), f"{part!r} not in: {err.value}"
    return str(err.value)


def _hf_logits(folder, ids):
    from transformers import AutoModelForCausalLM

    return logits(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), ids)


def test_untouched_fake_checkpoint_loads_every_tensor_from_the_file(fake, calib_ids):
    stored = load_file(str(fake / "model.safetensors"))
    loaded = load_quantized(fake)
    assert set(stored) <= set(loaded.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in stored.items())
    torch.testing.assert_close(logits(loaded, calib_ids[:2]), _hf_logits(fake, calib_ids[:2]))


def test_packed_checkpoint_without_quantization_config_is_refused(packed):
    cfg = json.loads((packed / "config.json").read_text())
    del cfg["quantization_config"]
    (packed / "config.json").write_text(json.dumps(cfg))
    msg = _raises(packed, str(packed / "model.safetensors"), ".qweight",
                  "qweight/scales present but config.json has no quantization_config")
    assert "match no parameter of LlamaForCausalLM" in msg


def test_fake_checkpoint_missing_a_tensor_is_refused(fake):
    name = "model.layers.1.mlp.down_proj.weight"
    _edit_tensors(fake, lambda t: t.pop(name))
    _raises(fake, str(fake), "model.safetensors", f"no tensor for {name}")


def test_float32_qweight_is_refused(packed):
    name = "model.layers.0.self_attn.q_proj.qweight"
    _edit_tensors(packed, _set(name, lambda q: q.float()))
    _raises(packed, f"{packed / 'model.safetensors'}: {name} is torch.float32", "must be torch.int32")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_scale_is_refused(packed, bad):
    name = "model.layers.1.mlp.gate_proj.scales"

    def poison(s):
        s = s.clone()
        s[0, 3] = bad
        return s

    _edit_tensors(packed, _set(name, poison))
    _raises(packed, f"{packed / 'model.safetensors'}: {name} holds 1 NaN/inf value(s)")


def test_non_finite_weight_in_fake_checkpoint_is_refused(fake):
    name = "model.layers.0.self_attn.o_proj.weight"

    def poison(w):
        w = w.clone()
        w[5, 7] = math.inf
        return w

    _edit_tensors(fake, _set(name, poison))
    _raises(fake, f"{fake / 'model.safetensors'}: {name} holds 1 NaN/inf value(s)")


def test_non_finite_bias_of_a_packed_layer_is_refused(tiny, calib_ids, tmp_path):
    folder = _export(tiny("qwen2"), calib_ids, Format.AUTO_ROUND, tmp_path / "qwen2")  # q/k/v carry biases
    name = "model.layers.0.self_attn.k_proj.bias"
    _edit_tensors(folder, _set(name, lambda b: torch.full_like(b, math.nan)))
    _raises(folder, f"{folder / 'model.safetensors'}: {name} holds")


@pytest.mark.parametrize("which", ["packed", "fake"])
def test_truncated_safetensors_names_the_file(which, request):
    folder = request.getfixturevalue(which)
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    _raises(folder, f"cannot read {f}", "truncated or corrupted")


@pytest.mark.parametrize("which", ["packed", "fake"])
@pytest.mark.parametrize("text, why", [("{\"model_type\": \"llama\",", "is not valid JSON"),
                                       ("[1, 2]", "expected a JSON object, got list")])
def test_invalid_config_json_names_the_file(which, text, why, request):
    folder = request.getfixturevalue(which)
    (folder / "config.json").write_text(text)
    _raises(folder, str(folder / "config.json"), why)


def test_wrong_shape_extra_and_wrong_dtype_tensors_in_fake_checkpoint(fake):
    name = "model.layers.0.mlp.up_proj.weight"
    original = load_file(str(fake / "model.safetensors"))
    _edit_tensors(fake, _set(name, lambda w: torch.cat([w, w[:1]])))
    _raises(fake, f"{fake / 'model.safetensors'}: {name} has shape (257, 128), LlamaForCausalLM expects (256, 128)")
    _edit_tensors(fake, lambda t: t.update(original, **{"model.layers.0.mlp.extra.weight": torch.zeros(3)}))
    msg = _raises(fake, str(fake / "model.safetensors"), "model.layers.0.mlp.extra.weight", "match no parameter")
    assert "quantization_config" not in msg  # the packed hint only when the extras look packed
    _edit_tensors(fake, lambda t: (t.pop("model.layers.0.mlp.extra.weight"), t.update({name: original[name].to(torch.int32)})))
    _raises(fake, f"{name} is torch.int32, LlamaForCausalLM expects a floating-point tensor")


def test_wrong_shape_float_tensor_in_packed_checkpoint(packed):
    name = "model.norm.weight"
    _edit_tensors(packed, _set(name, lambda w: w[:-1].contiguous()))
    _raises(packed, f"{packed / 'model.safetensors'}: {name} has shape (127,)")


@pytest.mark.parametrize("fmt", [Format.FAKE, Format.AUTO_ROUND])
def test_tied_embeddings_stored_once_keep_loading(tiny, calib_ids, tmp_path, fmt):
    model = tiny("gemma2")  # tie_word_embeddings: the lm_head is the embedding, stored once
    assert model.lm_head.weight is model.model.embed_tokens.weight
    folder = _export(model, calib_ids, fmt, tmp_path / "tied")
    assert not any(k.startswith("lm_head") for k in load_file(str(folder / "model.safetensors")))
    loaded = load_quantized(folder)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    if fmt == Format.FAKE:
        torch.testing.assert_close(logits(loaded, calib_ids[:2]), _hf_logits(folder, calib_ids[:2]))
