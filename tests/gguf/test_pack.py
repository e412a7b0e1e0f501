"""Packers: exact round trips, and gguf-py reads our bytes as our dequantizer does (every type)."""

import gguf
import numpy as np
import pytest
import torch

from signround.quant.gguf import GGMLType, SearchMode, decode_tensor, encode_tensor, quantize_tensor, unpack_tensor

from .gguf_testlib import QUANT, test_weights

SCALE_RANGE = {"Q2_K": (0, 15), "Q3_K": (-32, 31), "Q4_K": (0, 63), "Q5_K": (0, 63), "Q6_K": (-128, 127)}


@pytest.mark.parametrize("name", QUANT)
@pytest.mark.parametrize("mode", list(SearchMode))
def test_pack_unpack_round_trip(name, mode):
    w = test_weights()
    q = quantize_tensor(w, name, imatrix=torch.rand(512) if mode is SearchMode.IMATRIX else None, mode=mode)
    data = q.to_bytes()
    back = unpack_tensor(data, name, q.shape)
    assert torch.equal(back.codes, q.codes)
    assert torch.equal(back.to_bytes(), data)
    assert torch.equal(back.dequantize(), q.dequantize())


@pytest.mark.parametrize("name", QUANT)
def test_gguf_py_dequantizes_our_bytes_exactly(name):
    w = test_weights(seed=1)
    for mode in SearchMode:
        q = quantize_tensor(w, name, mode=mode)
        theirs = gguf.quants.dequantize(q.to_bytes().numpy(), gguf.GGMLQuantizationType[name])
        ours = q.dequantize().numpy()
        bad = ~(theirs == ours).reshape(-1, q.format.facts.block_size).all(axis=1)
        assert not bad.any(), f"{mode}: {bad.sum()}/{bad.size} blocks differ, first {np.argmax(bad)}"


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_float_types(name):
    w = test_weights(rows=4, cols=64)
    data = encode_tensor(w, name)
    assert data.shape == (4, 64 * {"F32": 4, "F16": 2, "BF16": 2}[name])
    theirs = gguf.quants.dequantize(data.numpy(), gguf.GGMLQuantizationType[name])
    assert np.array_equal(decode_tensor(data, name, (4, 64)).numpy(), theirs.reshape(4, 64))


def test_random_codes_survive_packing():
    """Any valid code/param combination packs and unpacks to itself (not only what a search produces)."""
    g = torch.Generator().manual_seed(3)
    for name in QUANT:
        q = quantize_tensor(test_weights(rows=8), name)
        f = q.format.facts
        codes = torch.randint(0, f.qmax + 1, q.codes.shape, generator=g).to(torch.uint8)
        p = q.params
        lo, hi = SCALE_RANGE.get(name, (0, 0))
        scales = None if p.scales is None else torch.randint(lo, hi + 1, p.scales.shape, generator=g).to(torch.int16)
        mins = None if p.mins is None else torch.randint(0, hi + 1, p.mins.shape, generator=g).to(torch.int16)
        q2 = type(q)(q.qtype, q.shape, type(p)(p.qtype, p.d, p.m, scales, mins), codes)
        back = unpack_tensor(q2.to_bytes(), name, q.shape)
        assert torch.equal(back.codes, codes), name
        if scales is not None:
            assert torch.equal(back.params.scales, scales), name


def test_shape_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"row size \(576\) is not a multiple of Q4_K block size \(256\) in blk.0.attn_q"):
        quantize_tensor(torch.zeros(4, 576), "q4_k", name="blk.0.attn_q")
    with pytest.raises(ValueError, match="imatrix has 3 entries, the weight has 64 input columns"):
        quantize_tensor(torch.zeros(4, 64), "q4_0", imatrix=torch.ones(3))
    with pytest.raises(ValueError, match="float type"):
        quantize_tensor(torch.zeros(4, 64), GGMLType.F16)
