"""Optimised RTN: the importance-weighted searches never do worse than min/max, and use the importance."""

import pytest
import torch

from signround.quant.grouping import to_groups
from signround.quant.int import minmax_init, quantize_groups
from signround.quant.search import importance_weights, search_int


def _werr(wg, p, w):
    w_hat = quantize_groups(wg, p)[0]
    return float((w * (w_hat - wg) ** 2).sum())


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("sym", [True, False])
def test_search_beats_minmax_on_heavy_tailed_weights(bits, sym):
    torch.manual_seed(0)
    wg = to_groups(torch.distributions.StudentT(3.0).sample((128, 256)), 64)
    ones = torch.ones_like(wg)
    base = _werr(wg, minmax_init(wg, bits, sym), ones)
    found = _werr(wg, search_int(wg, bits, sym), ones)
    assert found < base * (0.9 if bits <= 3 else 0.97), (found, base)


@pytest.mark.parametrize("sym", [True, False])
def test_importance_weighting_lowers_weighted_error(sym):
    torch.manual_seed(1)
    w = torch.randn(64, 256)
    imatrix = torch.rand(256) ** 4 * 10  # a few columns matter much more
    wg = to_groups(w, 128)
    imat_g = to_groups(imatrix.expand_as(w), 128)
    weights = importance_weights(wg, imat_g)
    plain = _werr(wg, search_int(wg, 3, sym), weights)
    weighted = _werr(wg, search_int(wg, 3, sym, imat_g), weights)
    assert weighted < plain * 0.95, (weighted, plain)


def test_all_zero_group_stays_zero():
    wg = torch.zeros(4, 32)
    for sym in (True, False):
        w_hat = quantize_groups(wg, search_int(wg, 4, sym))[0]
        assert torch.equal(w_hat, wg)


@pytest.mark.parametrize("sym", [True, False])
def test_search_in_slices_equals_one_pass(monkeypatch, sym):
    """search_int runs a slice of groups at a time to bound memory; the ranges are exactly those of one pass."""
    import signround.quant.search as search

    g = torch.Generator().manual_seed(3)
    wg = torch.randn(300, 32, generator=g)
    im = torch.rand(300, 32, generator=g)
    whole = search.search_int(wg, 4, sym, im)
    monkeypatch.setattr(search, "SEARCH_CHUNK", 32 * 7)  # 7 groups per slice, the last one short
    sliced = search.search_int(wg, 4, sym, im)
    for name in ("s0",) if sym else ("lo0", "hi0"):
        assert torch.equal(getattr(whole, name), getattr(sliced, name)), name


@pytest.mark.parametrize("sym", [True, False])
def test_imatrix_row_gives_the_full_size_imatrix_result(sym):
    """The per-column importance tiled slice by slice equals the full-size copy, also across search slices
    that end inside an output row (9 groups per row, slices of SEARCH_CHUNK // 64 groups)."""
    from signround.quant.grouping import to_groups
    from signround.quant.search import SEARCH_CHUNK

    g = torch.Generator().manual_seed(3)
    w = torch.randn(SEARCH_CHUNK // 576 * 3 + 5, 576, generator=g)
    im = torch.rand(576, generator=g) ** 4
    wg = to_groups(w, 64)
    assert (SEARCH_CHUNK // 64) % 9 and wg.shape[0] > SEARCH_CHUNK // 64
    full = search_int(wg, 3, sym, to_groups(im.expand_as(w), 64))
    tiled = search_int(wg, 3, sym, imatrix_row=to_groups(im.view(1, -1), 64))
    for name in ("s0", "lo0", "hi0"):
        if getattr(full, name, None) is not None:
            assert torch.equal(getattr(full, name), getattr(tiled, name)), name
    with pytest.raises(ValueError, match="not whole rows"):
        search_int(wg[:-1], 3, sym, imatrix_row=to_groups(im.view(1, -1), 64))
