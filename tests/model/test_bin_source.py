"""``pytorch_model.bin`` checkpoints are streamed like safetensors: same bytes out, same checks before any work."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from signround.api import AutoRound
from signround.errors import BadInputError
from signround.model.bin_source import BinSource
from signround.model.loading import open_model

FAST = dict(scheme="W4A16", group_size=32, nsamples=4, seqlen=32, batch_size=2, show_progress=False)


def _digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())
            if f.is_file() and f.name != "signround.json"}


def _bin_copy(src: Path, dest: Path, shards: int = 1, legacy: bool = False) -> Path:
    """``src``'s safetensors weights re-saved as pytorch_model.bin (``shards`` > 1: with an index)."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, dest / f.name)
    state = load_file(str(src / "model.safetensors"))
    names = list(state)
    if shards == 1:
        torch.save(state, dest / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
        return dest
    weight_map = {}
    for k in range(shards):
        file = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[k::shards]}
        torch.save(part, dest / file)
        weight_map.update(dict.fromkeys(part, file))
    (dest / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


@pytest.mark.parametrize("shards", [1, 3])
def test_bin_output_equals_the_safetensors_one(tiny_model_dir, tmp_path, shards):
    folder = _bin_copy(tiny_model_dir, tmp_path / "bin", shards)
    ar = AutoRound(str(folder), iters=2, **FAST)
    assert ar.loaded.weights.streamed and isinstance(ar.loaded.weights.source, BinSource)
    (got,) = ar.quantize_and_save(tmp_path / "b")
    (want,) = AutoRound(str(tiny_model_dir), iters=2, **FAST).quantize_and_save(tmp_path / "s")
    got_d, want_d = _digests(got), _digests(want)
    got_cfg, want_cfg = ({k: v for k, v in json.loads((d / "config.json").read_text()).items()
                          if k != "_name_or_path"} for d in (got, want))  # the source path, recorded as given
    assert got_cfg == want_cfg
    del got_d["config.json"], want_d["config.json"]
    assert got_d == want_d and "model.safetensors" in got_d
    assert all(p.is_meta for p in ar.model.model.layers.parameters())  # streamed: nothing kept


def test_read_copies_and_leaves_no_mapping(tiny_model_dir, tmp_path):
    """Each read owns its memory: the file's pages are unmapped once the tensor is copied (bounded RSS)."""
    folder = _bin_copy(tiny_model_dir, tmp_path / "bin")
    source = BinSource(folder)
    state = load_file(str(tiny_model_dir / "model.safetensors"))
    assert source.names() == list(state)
    name = "model.layers.1.mlp.down_proj.weight"
    t = source.read(name)
    assert torch.equal(t, state[name]) and source.info(name).shape == tuple(state[name].shape)
    maps = Path("/proc/self/maps")
    if maps.is_file():
        assert str(folder / "pytorch_model.bin") not in maps.read_text()


def _damaged(tiny_model_dir: Path, tmp_path: Path, edit) -> Path:
    folder = _bin_copy(tiny_model_dir, tmp_path / "bin")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    edit(state)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def _open(folder: Path):
    return open_model(str(folder), dtype="float32", show_progress=False)


@pytest.mark.parametrize("edit, parts", [
    (lambda s: s.pop("model.layers.0.self_attn.q_proj.weight"), ["no tensor for", "model.layers.0.self_attn.q_proj"]),
    (lambda s: s.__setitem__("model.layers.1.mlp.up_proj.weight", torch.zeros(3, 5)),
     ["model.layers.1.mlp.up_proj.weight", "pytorch_model.bin"]),
    (lambda s: s["model.layers.1.mlp.down_proj.weight"].view(-1).__setitem__(7, float("nan")),
     ["pytorch_model.bin", "model.layers.1.mlp.down_proj.weight", "NaN"]),
], ids=["missing", "shape", "nan"])
def test_damaged_bin_fails_before_any_work(tiny_model_dir, tmp_path, edit, parts):
    folder = _damaged(tiny_model_dir, tmp_path, edit)
    with pytest.raises(BadInputError) as err:
        _open(folder)
    for part in parts:
        assert part in str(err.value), err.value


def test_truncated_bin_and_missing_shard(tiny_model_dir, tmp_path):
    folder = _bin_copy(tiny_model_dir, tmp_path / "one")
    f = folder / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:-4096])
    with pytest.raises(BadInputError, match=r"pytorch_model\.bin: torch.load could not read it \(truncated"):
        _open(folder)
    folder = _bin_copy(tiny_model_dir, tmp_path / "sharded", shards=3)
    (folder / "pytorch_model-00002-of-00003.bin").unlink()
    with pytest.raises(BadInputError, match=r"places tensor .* in .*pytorch_model-00002-of-00003\.bin, but that "
                                            r"file is missing"):
        _open(folder)


def test_legacy_bin_loads_whole_and_says_why(tiny_model_dir, tmp_path, caplog):
    folder = _bin_copy(tiny_model_dir, tmp_path / "legacy", legacy=True)
    with caplog.at_level(logging.WARNING, logger="signround"):
        loaded = _open(folder)
    assert "legacy (non-zip) format" in caplog.text and not loaded.weights.streamed
    want = load_file(str(tiny_model_dir / "model.safetensors"))["model.layers.0.mlp.gate_proj.weight"]
    assert torch.equal(loaded.model.model.layers[0].mlp.gate_proj.weight, want)
