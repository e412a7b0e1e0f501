"""FP/MX numerics: element rounding against torch's float8 casts and the FP4 table, E8M0 scales, NVFP4, FP8 blocks."""

from __future__ import annotations

import math

import pytest
import torch

from signround.formats.fp_packing import e8m0_encode, fp8_scale_encode
from signround.quant.fp import (E2M1, E4M3, E5M2, check_finite, encode_elements, fp8_codes, quantize_elements,
                                round_element)
from signround.quant.fp8 import FP8_SCALE_MIN, block_shape, fp8_quantize, from_blocks, to_blocks
from signround.quant.fp_types import FP4_MAGNITUDES, element_values
from signround.quant.mx import mx_exponent, mx_quantize
from signround.quant.nvfp import NV_SCALE_MIN, nv_global_scale, nv_quantize

GEN = torch.Generator().manual_seed(0)


def _probe_values(dtype: torch.dtype, max_value: float) -> torch.Tensor:
    """Every finite value of a float8 type, the midpoints between neighbours (ties) and the floats around them."""
    vals = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    grid = vals[torch.isfinite(vals)].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    up, down = torch.tensor(math.inf), torch.tensor(-math.inf)
    rand = torch.cat([torch.randn(200_000, generator=GEN) * max_value / 8,
                      torch.randn(50_000, generator=GEN) * 1e-3,  # subnormals of the format
                      torch.tensor([1e-40, -1e-45, 0.0, -0.0, max_value, -max_value])])
    x = torch.cat([grid, mids, torch.nextafter(mids, up), torch.nextafter(mids, down), rand])
    return x[x.abs() <= max_value]


@pytest.mark.parametrize("fmt,dtype", [(E4M3, torch.float8_e4m3fn), (E5M2, torch.float8_e5m2)])
def test_fp8_rounding_equals_the_torch_cast_on_every_finite_input_in_range(fmt, dtype):
    x = _probe_values(dtype, fmt.max_value)
    want = x.to(dtype).float()
    got = round_element(x, fmt)
    bad = (got != want).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, first x={x[bad[:5]].tolist()} got {got[bad[:5]].tolist()}"


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E2M1])
def test_beyond_range_saturates_instead_of_nan(fmt):
    x = torch.tensor([fmt.max_value * 1.04, fmt.max_value * 1.1, 1e30, -1e30])
    assert torch.equal(round_element(x, fmt), torch.tensor([1.0, 1, 1, -1]) * fmt.max_value)


def test_fp4_table_and_ties_to_even():
    codes = torch.arange(16, dtype=torch.uint8)
    values = element_values(codes, "mx_fp", 4)
    assert values[:8].tolist() == list(FP4_MAGNITUDES)
    assert torch.equal(round_element(values, E2M1), values)  # every code is on the grid
    back = encode_elements(values, "mx_fp", 4)
    assert torch.equal(back[codes != 8], codes[codes != 8]) and back[8] == 0  # -0 stores as +0
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    assert round_element(ties, E2M1).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    assert round_element(-ties, E2M1).tolist() == [-0.0, -1.0, -1.0, -2.0, -2.0, -4.0, -4.0]
    near = torch.tensor([0.26, 0.74, 1.26, 2.49, 2.51, 4.99, 5.01, 6.9])
    assert round_element(near, E2M1).tolist() == [0.5, 0.5, 1.5, 2.0, 3.0, 4.0, 6.0, 6.0]


@pytest.mark.parametrize("data_type,bits", [("mx_fp", 4), ("mx_fp", 8), ("nv_fp", 4), ("fp", 8), ("mx_int", 4),
                                            ("mx_int", 8), ("mx_fp_rceil", 4)])
def test_element_codes_reproduce_the_rounded_values(data_type, bits):
    y = torch.cat([torch.randn(20_000, generator=GEN) * 3, torch.tensor([0.0, -0.0, -1e-9, 1e-9, 1e5, -1e5])])
    values = quantize_elements(y, data_type, bits)
    codes = encode_elements(values, data_type, bits)
    assert torch.equal(element_values(codes, data_type, bits), values)
    zeros = encode_elements(quantize_elements(torch.tensor([0.0, -0.0, -1e-9]), data_type, bits), data_type, bits)
    assert zeros.tolist() == [0, 0, 0]  # a zero weight is code 0 whatever its sign


def test_mx_int_elements():
    y = torch.tensor([0.1, 0.125, 0.375, 1.6, 1.74, 1.9, -1.9, -0.2])
    assert quantize_elements(y, "mx_int", 4).tolist() == [0.0, 0.0, 0.5, 1.5, 1.75, 1.75, -1.75, -0.25]
    codes = encode_elements(quantize_elements(y, "mx_int", 8), "mx_int", 8)
    assert element_values(codes, "mx_int", 8).abs().max() <= 127 / 64


def test_fp8_zero_code_is_never_negative_zero():
    assert fp8_codes(torch.tensor([-0.0, 0.0, -1.0])).tolist() == [0, 0, 0xB8]


def _ref_exponent(m: float, emax: int, max_element: float, rceil: bool) -> int:
    if m == 0:
        return -127
    e = math.ceil(math.log2(m / max_element)) if rceil else math.floor(math.log2(m)) - emax
    return max(-127, min(127, e))


@pytest.mark.parametrize("data_type,bits,emax,max_element", [("mx_fp", 4, 2, 6.0), ("mx_fp", 8, 8, 448.0),
                                                             ("mx_fp_rceil", 4, 2, 6.0), ("mx_fp_rceil", 8, 8, 448.0),
                                                             ("mx_int", 4, 0, 1.75), ("mx_int", 8, 0, 127 / 64)])
def test_e8m0_exponents_floor_and_rceil(data_type, bits, emax, max_element):
    m = torch.cat([torch.exp2(torch.rand(5000, generator=GEN) * 80 - 40),
                   torch.tensor([0.0, 6.0, 6.0 * (1 + 2**-23), 8.0, 448.0, 449.0, 512.0, 1e-45, 3e38, 1.75])])
    got = mx_exponent(m, data_type, bits)
    want = [_ref_exponent(float(v), emax, max_element, data_type.endswith("rceil")) for v in m.double()]
    assert got.tolist() == want


def test_mx_floor_saturates_and_rceil_does_not():
    g = torch.zeros(1, 32)
    g[0, 0], g[0, 1] = 7.9, 1.0
    x_hat, e, s = mx_quantize(g, "mx_fp", 4)
    assert s.item() == 1.0 and e[0, 0] == 6.0 and x_hat[0, 0] == 6.0  # floor: 7.9 / 1 saturates at 6
    x_hat, e, s = mx_quantize(g, "mx_fp_rceil", 4)
    assert s.item() == 2.0 and x_hat[0, 0] == 8.0  # rceil: 7.9 / 2 = 3.95 -> 4


def test_mx_zero_subnormal_and_huge_groups_stay_finite():
    g = torch.stack([torch.zeros(32), torch.full((32,), 1e-40), torch.randn(32, generator=GEN) * 1e37])
    for dt, bits in (("mx_fp", 4), ("mx_fp", 8), ("mx_int", 4), ("mx_fp_rceil", 8)):
        x_hat, e, s = mx_quantize(g, dt, bits)
        assert torch.isfinite(x_hat).all() and torch.isfinite(s).all()
        assert s[0].item() == 2.0**-127 and e[0].abs().max() == 0
        e8m0_encode(s)  # every scale is a power of two in E8M0's range
        assert torch.equal(x_hat, e * s)
        big = ((g[2] - x_hat[2]) / 1e37).norm() / (g[2] / 1e37).norm()  # scaled: a norm of 1e37s overflows
        assert big < 0.25


# Measured on randn(256, 1024) (seed 1): MXFP4 0.1151, MXFP4 rceil 0.1153, MXFP8 0.0294, MXINT4 0.1323,
# NVFP4 0.0949, FP8 per channel 0.0264. Bounds are the measurement + 10%.
@pytest.mark.parametrize("data_type,bits,bound", [("mx_fp", 4, 0.127), ("mx_fp_rceil", 4, 0.127), ("mx_fp", 8, 0.0324),
                                                  ("mx_int", 4, 0.146), ("nv_fp", 4, 0.105), ("fp", 8, 0.0291)])
def test_gaussian_relative_error_bounds(data_type, bits, bound):
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(1))
    if data_type == "nv_fp":
        x_hat = nv_quantize(to_blocks(w, (1, 16)), nv_global_scale(w.abs().max()))[0]
        x_hat = from_blocks(x_hat, (1, 16), (256, 1024))
    elif data_type == "fp":
        x_hat = fp8_quantize(w)[0]
    else:
        x_hat = from_blocks(mx_quantize(to_blocks(w, (1, 32)), data_type, bits)[0], (1, 32), (256, 1024))
    rel = float((x_hat - w).norm() / w.norm())
    assert rel < bound, rel
    assert rel > bound / 2  # the bound is measured, not loose


def test_nvfp4_scales_and_global_scale():
    w = torch.randn(64, 128, generator=GEN)
    w[3, 5] = 40.0  # the tensor max
    w[7, 16:32] = 1e-7  # a block far below the tensor max: its scale clamps at 2**-9
    gs = nv_global_scale(w.abs().max())
    assert gs.dtype == torch.float32 and gs.item() == pytest.approx(448 * 6 / 40.0)
    x_hat, e, s8 = nv_quantize(to_blocks(w, (1, 16)), gs)
    fp8_scale_encode(s8)  # every block scale is an E4M3 value
    assert s8.max() == 448.0 and s8.min() == NV_SCALE_MIN
    assert torch.equal(x_hat, e * (s8 / gs))
    w_hat = from_blocks(x_hat, (1, 16), (64, 128))
    assert w_hat[3, 5].item() == pytest.approx(40.0, rel=1e-6)  # 6 * 448 / gs
    assert e.abs().max() <= 6
    zero = nv_quantize(torch.zeros(2, 16), nv_global_scale(torch.tensor(0.0)))
    assert all(torch.isfinite(t).all() for t in zero) and zero[0].abs().max() == 0


@pytest.mark.parametrize("group_size,group_rows", [(0, 1), (-1, 1), (64, 1), (128, 128)])
def test_fp8_granularities_against_a_per_block_reference(group_size, group_rows):
    w = torch.randn(300, 200, generator=GEN) * 0.02
    w[:128, :128] = 0.0  # an all-zero block
    block = block_shape(group_size, group_rows, tuple(w.shape))
    x_hat, e, scale = fp8_quantize(to_blocks(w, block))
    w_hat = from_blocks(x_hat, block, (300, 200))
    rows, cols = block
    for r0 in range(0, 300, rows):
        for c0 in range(0, 200, cols):
            part = w[r0:r0 + rows, c0:c0 + cols]
            s = max(part.abs().max().item() / 448, FP8_SCALE_MIN)
            want = (part / torch.tensor(s, dtype=torch.float32)).to(torch.float8_e4m3fn).float() * s
            assert torch.equal(w_hat[r0:r0 + rows, c0:c0 + cols], want), (r0, c0)
    assert scale.min() >= FP8_SCALE_MIN


def test_blocks_round_trip_with_partial_blocks():
    w = torch.arange(300 * 200, dtype=torch.float32).reshape(300, 200)
    for block in ((128, 128), (1, 32), (1, 200), (300, 200), (7, 3)):
        b = to_blocks(w, block)
        assert b.shape[1] == block[0] * block[1]
        assert torch.equal(from_blocks(b, block, (300, 200)), w), block
    b = to_blocks(w, (128, 128))
    assert torch.equal(b[1, :128], torch.cat([w[0, 128:200], torch.zeros(56)]))  # block (0, 1): its first row, padded


def test_non_finite_values_are_refused_with_the_name():
    w = torch.randn(10, 10)
    w[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"model.layers.0.q_proj: the weight holds NaN/inf"):
        check_finite(w, "model.layers.0.q_proj")
    w[2, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        check_finite(w, "x")
