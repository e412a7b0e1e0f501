"""A hub id is resolved to its local snapshot and streamed from there (offline: a Hugging Face cache built here)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from signround.api import AutoRound
from signround.errors import BadInputError
from signround.model.weights import SafetensorsSource

FAST = dict(scheme="W4A16", group_size=32, nsamples=4, seqlen=32, batch_size=2, show_progress=False)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty HF cache, offline (the constants are read at import, so they are patched too)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    for var, value in (("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _cache_repo(cache: Path, repo: str, files: Path) -> Path:
    """``files`` laid out as the cached snapshot of ``repo`` (refs/main -> snapshots/<commit>/...)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    shutil.copytree(files, snap)
    return snap


def _digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())
            if f.is_file() and f.name not in ("signround.json", "config.json")}


def test_hub_id_streams_its_cached_snapshot(offline_cache, tiny_model_dir, tmp_path):
    snap = _cache_repo(offline_cache, "acme/tiny", tiny_model_dir)
    ar = AutoRound("acme/tiny", iters=1, **FAST)
    assert ar.loaded.weights.streamed and isinstance(ar.loaded.weights.source, SafetensorsSource)
    assert ar.loaded.weights.source.folder == snap and ar.loaded.source == "acme/tiny"
    (got,) = ar.quantize_and_save(tmp_path / "h")
    assert got.name.startswith("tiny-")
    assert json.loads((got / "config.json").read_text())["_name_or_path"] == "acme/tiny"  # not the cache path
    (want,) = AutoRound(str(tiny_model_dir), iters=1, **FAST).quantize_and_save(tmp_path / "l")
    assert _digests(got) == _digests(want) and "model.safetensors" in _digests(got)


def test_unknown_hub_id_offline_fails_clearly(offline_cache, monkeypatch):
    import signround.model.loading as loading

    monkeypatch.setattr(loading, "build_skeleton", lambda *a, **k: pytest.fail("nothing may be built"), raising=False)
    with pytest.raises(BadInputError, match=r"model 'acme/nothing' is not a local path and the Hugging Face hub did "
                                            r"not provide it"):
        AutoRound("acme/nothing", iters=1, **FAST)
    # the request's own checks still come first: a bad option names itself, not the model
    with pytest.raises(ValueError, match="group_size"):
        AutoRound("acme/nothing", **{**FAST, "group_size": 48})


def test_hub_id_without_safetensors_streams_its_bin_files(offline_cache, tiny_model_dir, tmp_path):
    from signround.model.bin_source import BinSource
    from signround.model.loading import open_model
    from tests.model.test_bin_source import _bin_copy

    snap = _cache_repo(offline_cache, "acme/tinybin", _bin_copy(tiny_model_dir, tmp_path / "bin", shards=2))
    loaded = open_model("acme/tinybin", dtype="float32", show_progress=False)
    assert isinstance(loaded.weights.source, BinSource) and loaded.weights.source.folder == snap
    assert loaded.source == "acme/tinybin" and loaded.model.config._name_or_path == "acme/tinybin"
