"""Streaming: a model opened from disk is read one block at a time and written as each block finishes,
with outputs byte-identical to quantizing the same model held whole in memory."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import signround.model.streaming as streaming
from signround.api import AutoRound
from signround.inference.load import load_quantized

FAST = dict(nsamples=8, seqlen=32, batch_size=4, show_progress=False)


def _digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())
            if f.is_file() and f.name != "signround.json"}


@pytest.fixture(scope="module")
def sharded_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama checkpoint re-saved in several safetensors shards (with an index)."""
    folder = tmp_path_factory.mktemp("sharded") / "tiny"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(folder, max_shard_size="400KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    assert len(list(folder.glob("*.safetensors"))) > 2
    return folder


@pytest.mark.parametrize("kw", [dict(iters=0, disable_opt_rtn=True), dict(iters=0), dict(iters=3)],
                         ids=["rtn", "opt-rtn", "signround"])
def test_streamed_output_equals_the_in_memory_one(sharded_dir, tmp_path, kw):
    """Same bytes from the shards streamed block by block and from the model loaded whole (auto_round, fake),
    also when the output itself is written in several shards."""
    args = dict(scheme="W4A16", group_size=32, max_shard_size="300KB", **FAST, **kw)
    streamed = AutoRound(str(sharded_dir), **args)
    assert streamed.loaded.weights.streamed
    dirs_s = streamed.quantize_and_save(tmp_path / "s", format="auto_round,fake")
    whole = AutoModelForCausalLM.from_pretrained(sharded_dir, dtype=torch.float32)
    in_memory = AutoRound(whole, AutoTokenizer.from_pretrained(sharded_dir), **args)
    dirs_m = in_memory.quantize_and_save(tmp_path / "m", format="auto_round,fake")
    for a, b in zip(dirs_s, dirs_m):
        da, db = _digests(a), _digests(b)
        assert len([n for n in da if n.endswith(".safetensors")]) > 1  # the output is sharded too
        assert da == db, a.name
    # the streamed run kept nothing: the model is a skeleton again and the codes were handed to the writers
    assert all(p.is_meta for p in streamed.model.model.layers.parameters())
    assert streamed.result.weights == {}
    # and the output loads with the quantized weights
    q = load_quantized(dirs_s[0])
    ref = load_quantized(dirs_m[0])
    ids = torch.randint(0, 500, (1, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(q(ids).logits, ref(ids).logits)


def test_one_block_in_memory_at_a_time(sharded_dir, tmp_path, monkeypatch):
    seen: list[int] = []
    real = streaming.materialize

    def watched(model, prefix, source, **kw):
        real(model, prefix, source, **kw)
        loaded = [i for i, b in enumerate(model.model.layers) if not any(p.is_meta for p in b.parameters())]
        seen.append(len(loaded))

    monkeypatch.setattr(streaming, "materialize", watched)
    AutoRound(str(sharded_dir), scheme="W4A16", group_size=32, iters=2, **FAST).quantize_and_save(tmp_path)
    assert seen and max(seen) == 1


def test_quantize_keeps_the_streamed_model_whole(sharded_dir):
    """``quantize()`` (no output) leaves the model in memory holding its dequantized codes, as before."""
    ar = AutoRound(str(sharded_dir), scheme="W4A16", group_size=32, iters=0, **FAST)
    model, result = ar.quantize()
    assert not any(p.is_meta for p in model.parameters())
    w = model.model.layers[1].mlp.down_proj.weight
    assert torch.equal(w, result.weights["model.layers.1.mlp.down_proj"].dequantize().to(w.dtype))


def test_bf16_checkpoint_stays_bf16(tiny_model_dir, tmp_path):
    folder = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    ar = AutoRound(str(folder), scheme="W4A16", group_size=32, iters=1, **FAST)
    assert next(ar.model.parameters()).dtype == torch.bfloat16
    (out,) = ar.quantize_and_save(tmp_path / "q")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        src = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
        assert torch.equal(f.get_tensor("model.embed_tokens.weight"), src.model.embed_tokens.weight)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_activations_spill_to_disk_with_the_same_result(sharded_dir, tmp_path, caplog):
    args = dict(scheme="W4A16", group_size=32, iters=2, **FAST)
    (ram,) = AutoRound(str(sharded_dir), **args).quantize_and_save(tmp_path / "ram")
    with caplog.at_level(logging.INFO, logger="signround"):
        (disk,) = AutoRound(str(sharded_dir), max_memory="1KB", **args).quantize_and_save(tmp_path / "disk")
    assert "disk" in caplog.text and "float inputs" in caplog.text
    a, b = _digests(ram), _digests(disk)
    assert a.pop("config.json") != b.pop("config.json")  # it records max_memory (1000 vs auto), nothing else differs
    assert a == b
    assert not list((tmp_path / "disk").glob(".*"))  # spill files and the work directory are gone
