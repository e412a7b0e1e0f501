"""Streamed reads of float tensors: piecewise reads and casts equal whole ones, damaged files are named."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import signround.inference.packed_stream as packed_stream
from signround.inference.assign import check_tensors
from signround.inference.layouts import CheckpointError
from signround.inference.packed_stream import ShardTensors

TENSORS = {"rows": torch.randn(37, 5), "flat": torch.randn(300), "scalar": torch.tensor(3.5),
           "ints": torch.randint(0, 9, (4, 3, 2), dtype=torch.int32), "half": torch.randn(7, 3, 4).bfloat16()}


@pytest.fixture
def shard(tmp_path, monkeypatch):
    monkeypatch.setattr(packed_stream, "CHUNK_BYTES", 64)  # many pieces per tensor
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, str(path))
    return path, ShardTensors(dict.fromkeys(TENSORS, str(path)))


def test_piecewise_reads_equal_whole_ones(shard):
    _, st = shard
    for name, t in TENSORS.items():
        assert st.header(name) == (tuple(t.shape), t.dtype)
        got = st.read_as(name, torch.bfloat16)
        assert got.dtype == torch.bfloat16 and torch.equal(got, t.to(torch.bfloat16))
        assert torch.equal(st.read_as(name, torch.float64), t.double())
        pieces = [p.clone() for p in st.row_chunks(name)]
        assert len(pieces) > 1 or t.numel() * t.element_size() <= 64
        assert torch.equal(torch.cat([p.reshape(-1) for p in pieces]), t.reshape(-1))


def test_nan_in_a_later_piece_and_a_truncated_file_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(packed_stream, "CHUNK_BYTES", 64)
    bad = torch.randn(40, 4)
    bad[33, 1], bad[39, 0] = float("nan"), float("inf")
    path = tmp_path / "bad.safetensors"
    save_file({"w": bad}, str(path))
    st = ShardTensors({"w": str(path)})
    with pytest.raises(CheckpointError, match=r"bad.safetensors: w holds 2 NaN/inf value\(s\) of 160"):
        check_tensors(st, st.where, {"w": torch.empty(40, 4, device="meta")}, "Tiny", quantized=False)
    with pytest.raises(CheckpointError, match=r"w has shape \(40, 4\), Tiny expects \(4, 40\)"):
        check_tensors(st, st.where, {"w": torch.empty(4, 40, device="meta")}, "Tiny", quantized=False)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="ends inside tensor data"):
        ShardTensors({"w": str(path)}).read_as("w", torch.float32)


def test_auto_round_fp_layers_are_decoded_when_built(tiny, calib_ids, tmp_path):
    """Streamed loading decodes an FP layer only when the loader asks for it, to the same codes as reading the
    whole checkpoint at once."""
    from signround.export.registry import ExportInput, export_model
    from signround.formats import Format
    from signround.inference.checkpoint import read_checkpoint
    from signround.inference.packed_stream import LazyLayers
    from tests.helpers import quantize_tiny

    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, "MXFP4", iters=0, formats=(Format.AUTO_ROUND,))
    out = export_model(ExportInput(model, None, plan, result.weights, source="tiny", act_max=result.act_max),
                       Format.AUTO_ROUND, tmp_path / "q")
    streamed, whole = read_checkpoint(out, stream=True), read_checkpoint(out)
    assert isinstance(streamed.layers, LazyLayers) and not streamed.layers._eager  # nothing decoded yet
    assert sorted(streamed.layers) == sorted(whole.layers) and len(whole.layers) == len(plan.quantized())
    for name, fq in whole.layers.items():
        got = streamed.layers[name]
        assert torch.equal(got.codes, fq.codes) and torch.equal(got.scale, fq.scale) and got.data_type == "mx_fp"
    assert not any(k.endswith(("weight_packed", "weight_scale")) for k in streamed.tensors)
