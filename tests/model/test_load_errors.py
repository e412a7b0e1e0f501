"""Loading the user's float model (whole, or opened for streaming): a damaged checkpoint is a BadInputError naming
file and tensor, never random init."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from signround.errors import BadInputError
from signround.model.loading import load_model, open_model
from tests.interop.common import byte_tokenizer


@pytest.fixture
def saved(tiny, tmp_path):
    model = tiny("llama")
    model.save_pretrained(tmp_path / "m")
    byte_tokenizer().save_pretrained(tmp_path / "m")
    return tmp_path / "m", model


def _edit(folder, fn):
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def _raises(folder, *parts, load=lambda f: load_model(str(f), dtype="float32")):
    with pytest.raises(BadInputError) as err:
        load(folder)
    for part in parts:
        assert part in str(err.value), f"{part!r} not in: {err.value}"


def _raises_open(folder, *parts):
    """``open_model`` (streamed quantization) checks the checkpoint whole before any work."""
    _raises(folder, *parts, load=lambda f: open_model(str(f), dtype="float32", show_progress=False))


def test_intact_checkpoint_loads_the_stored_weights(saved):
    folder, model = saved
    loaded = load_model(str(folder), dtype="float32").model
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_invalid_config_json(saved):
    folder, _ = saved
    (folder / "config.json").write_text("{\"model_type\": ")
    _raises(folder, str(folder / "config.json"), "is not valid JSON")
    (folder / "config.json").write_text("\"llama\"")
    _raises(folder, str(folder / "config.json"), "expected a JSON object, got str")


def test_truncated_safetensors(saved):
    folder, _ = saved
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _raises(folder, f"cannot read {f}", "truncated or corrupted")


def test_missing_tensor_is_not_filled_randomly(saved):
    folder, _ = saved
    name = "model.layers.1.self_attn.v_proj.weight"
    _edit(folder, lambda t: t.pop(name))
    _raises(folder, str(folder / "model.safetensors"), f"no tensor for {name}")


def test_nan_weight(saved):
    folder, _ = saved
    name = "model.layers.0.mlp.down_proj.weight"

    def poison(t):
        t[name] = t[name].clone()
        t[name][1, 2] = math.nan

    _edit(folder, poison)
    _raises(folder, f"{folder / 'model.safetensors'}: {name} holds NaN/inf")


def test_tied_lm_head_stored_once_loads(tiny, tmp_path):
    model = tiny("gemma2")
    model.save_pretrained(tmp_path / "tied")
    byte_tokenizer().save_pretrained(tmp_path / "tied")
    assert "lm_head.weight" not in load_file(str(tmp_path / "tied" / "model.safetensors"))
    loaded = load_model(str(tmp_path / "tied"), dtype="float32").model
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_opens_as_a_skeleton_whose_blocks_read_the_stored_weights(saved):
    folder, model = saved
    lm = open_model(str(folder), show_progress=False)
    assert lm.weights.streamed and all(p.is_meta for p in lm.model.parameters())
    lm.weights.load(lm.model, "")
    for k, v in model.state_dict().items():
        assert torch.equal(lm.model.state_dict()[k], v), k


def test_open_invalid_config_json(saved):
    folder, _ = saved
    (folder / "config.json").write_text("{\"model_type\": ")
    _raises_open(folder, str(folder / "config.json"), "is not valid JSON")


def test_open_truncated_safetensors(saved):
    folder, _ = saved
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _raises_open(folder, str(f), "truncated?")


def test_open_missing_tensor(saved):
    folder, _ = saved
    name = "model.layers.1.self_attn.v_proj.weight"
    _edit(folder, lambda t: t.pop(name))
    _raises_open(folder, f"no tensor for {name}", "random weights")


def test_open_nan_weight_fails_before_any_work(saved):
    folder, _ = saved
    name = "model.layers.1.mlp.down_proj.weight"

    def poison(t):
        t[name] = t[name].clone()
        t[name][3, 2] = math.inf

    _edit(folder, poison)
    _raises_open(folder, f"{folder / 'model.safetensors'}: {name} holds NaN/inf")
