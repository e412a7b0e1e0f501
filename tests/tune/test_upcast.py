"""A bf16 block quantized without tuning keeps its Linear weights in bf16 (upcast one layer at a time) and
gives the bytes the whole-float32 block gives."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import signround.tune.driver as driver
from signround.api import AutoRound
from signround.tune.upcast import linears_in_float32

FAST = dict(nsamples=8, seqlen=32, batch_size=4, show_progress=False)


def _digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())
            if f.is_file() and f.name != "signround.json"}


@pytest.fixture(scope="module")
def bf16_dir(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bf16") / "tiny"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(folder,
                                                                                            max_shard_size="400KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_linears_compute_in_float32_and_keep_their_storage():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    weight = lin.weight.data
    x = torch.randn(5, 64)
    with linears_in_float32({"lin": lin}):
        y = lin(x)
    assert y.dtype == torch.float32 and torch.equal(y, F.linear(x, weight.float()))
    assert lin.weight.data_ptr() == weight.data_ptr() and lin.weight.dtype == torch.bfloat16
    with pytest.raises(RuntimeError), linears_in_float32({"lin": lin}):
        lin(torch.randn(5, 63))  # a forward that fails still gives the weight back
    assert lin.weight.data_ptr() == weight.data_ptr()


@pytest.mark.parametrize("scheme,fmt", [("W4A16", "auto_round,fake"), ("NVFP4", "llm_compressor")])
@pytest.mark.parametrize("whole", [False, True], ids=["streamed", "in-memory"])
def test_per_layer_upcast_gives_the_float32_blocks_bytes(bf16_dir, tmp_path, monkeypatch, scheme, fmt, whole):
    calls = []
    real = driver.small_tensors_to_float32
    monkeypatch.setattr(driver, "small_tensors_to_float32", lambda *a: calls.append(1) or real(*a))

    def run(folder):
        src = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16) if whole else str(bf16_dir)
        tok = AutoTokenizer.from_pretrained(bf16_dir) if whole else None
        ar = AutoRound(src, tok, scheme=scheme, iters=0, **FAST)  # optimised RTN: reads data, tunes nothing
        return ar.quantize_and_save(tmp_path / folder, format=fmt)

    new = run("per-layer")
    assert calls  # the per-layer path ran
    monkeypatch.setattr(driver, "_upcast_per_layer", lambda *a: False)
    old = run("whole-block")
    for a, b in zip(new, old):
        assert _digests(a) == _digests(b), a.name
