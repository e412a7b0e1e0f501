"""Opening a checkpoint for streamed quantization checks it whole first: a damaged file fails at once, naming
the file and the tensor, before any calibration or block work."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from signround.errors import BadInputError
from signround.model.loading import open_model
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


def _raises(folder, *parts):
    with pytest.raises(BadInputError) as err:
        open_model(str(folder), dtype="float32", show_progress=False)
    for part in parts:
        assert part in str(err.value), f"{part!r} not in: {err.value}"


def test_opens_as_a_skeleton_whose_blocks_read_the_stored_weights(saved):
    folder, model = saved
    lm = open_model(str(folder), show_progress=False)
    assert lm.weights.streamed and all(p.is_meta for p in lm.model.parameters())
    lm.weights.load(lm.model, "")
    for k, v in model.state_dict().items():
        assert torch.equal(lm.model.state_dict()[k], v), k


def test_invalid_config_json(saved):
    folder, _ = saved
    (folder / "config.json").write_text("{\"model_type\": ")
    _raises(folder, str(folder / "config.json"), "is not valid JSON")


def test_truncated_safetensors(saved):
    folder, _ = saved
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _raises(folder, str(f), "truncated?")


def test_missing_tensor(saved):
    folder, _ = saved
    name = "model.layers.1.self_attn.v_proj.weight"
    _edit(folder, lambda t: t.pop(name))
    _raises(folder, f"no tensor for {name}", "random weights")


def test_nan_weight_fails_before_any_work(saved):
    folder, _ = saved
    name = "model.layers.1.mlp.down_proj.weight"

    def poison(t):
        t[name] = t[name].clone()
        t[name][3, 2] = math.inf

    _edit(folder, poison)
    _raises(folder, f"{folder / 'model.safetensors'}: {name} holds NaN/inf")
