"""Integer group quantization: conventions, codes as source of truth, STE gradients."""

import pytest
import torch

from signround.quant.grouping import from_groups, to_groups
from signround.quant.int import fake_quant, minmax_init, quantize_groups, round_ste


def test_full_range_sym_maps_extreme_to_minus_m():
    wg = torch.tensor([[0.5, -1.0, 0.25, 0.0], [2.0, -0.5, 1.0, 0.1]])
    p = minmax_init(wg, bits=4, sym=True)
    w_hat, q, s, z = quantize_groups(wg, p)
    # Group 0: the negative side dominates -> positive scale 1/8; group 1: positive side -> negative scale -2/8.
    assert torch.allclose(s.flatten(), torch.tensor([0.125, -0.25]))
    assert q[0, 1] == 0 and q[1, 0] == 0  # the extreme value uses the code for -8 (unsigned 0)
    assert torch.all(z == 8)
    assert torch.allclose(w_hat[0], torch.tensor([0.5, -1.0, 0.25, 0.0]))
    assert float(w_hat[1, 0]) == 2.0


def test_asym_uses_integer_zero_point_and_exact_range_ends():
    wg = torch.tensor([[0.0, 1.0, 2.0, 3.0], [-3.0, -1.0, 0.0, 12.0]])
    p = minmax_init(wg, bits=2, sym=False)
    w_hat, q, s, z = quantize_groups(wg, p)
    assert torch.allclose(s.flatten(), torch.tensor([1.0, 5.0]))
    assert torch.equal(z.flatten(), torch.tensor([0.0, 1.0]))  # round(3/5) = 1
    assert torch.allclose(w_hat[0], wg[0])
    assert torch.all((q >= 0) & (q <= 3))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_dequant_error_bounded_by_half_step(bits, sym):
    torch.manual_seed(bits)
    w = torch.randn(64, 256)
    wg = to_groups(w, 64)
    p = minmax_init(wg, bits, sym)
    w_hat, q, s, z = quantize_groups(wg, p)
    assert torch.equal(w_hat, s * (q - z))  # the dequantized value is exactly scale * (code - zero)
    err = (w_hat - wg).abs()
    t = wg / s + z
    inside = (t >= -0.5) & (t <= 2**bits - 0.5)  # not clipped at either end of the code range
    assert bool((err[inside] <= (s.abs() * 0.5 + 1e-6).expand_as(err)[inside]).all())
    # Clipping costs at most one step: full-range sym gives the non-dominant side one code less.
    assert bool((err <= s.abs() * 1.001 + 1e-6).all())
    assert float(q.max()) <= 2**bits - 1 and float(q.min()) >= 0


def test_scales_are_float16_representable():
    wg = to_groups(torch.randn(16, 128) * 0.0123, 32)
    _, _, s, _ = quantize_groups(wg, minmax_init(wg, 4, True))
    assert torch.equal(s, s.half().float())


def test_rounding_offset_flips_rounding_and_has_identity_gradient():
    wg = torch.tensor([[0.30, -1.0, 0.55, 0.9]])
    p = minmax_init(wg, 4, sym=True)  # scale 1/8: 0.30 -> 2.4 rounds to 2
    v = torch.zeros_like(wg, requires_grad=True)
    out = fake_quant(wg, p, v)
    assert float(out[0, 0].detach()) == 0.25
    out.sum().backward()
    assert torch.allclose(v.grad, p.s0.expand_as(wg))  # d(s*round(x/s+v))/dv = s through the STE
    with torch.no_grad():
        v[0, 0] = 0.2
    assert float(fake_quant(wg, p, v)[0, 0]) == 0.375  # 2.4 + 0.2 rounds to 3


def test_round_ste_forward_is_half_to_even():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_groups_pad_and_unpad():
    w = torch.arange(2 * 576, dtype=torch.float32).reshape(2, 576)
    wg = to_groups(w, 128)
    assert wg.shape == (2 * 5, 128)
    assert torch.all(wg[4, 64:] == 0)  # the last group of row 0 is half padding
    assert torch.equal(from_groups(wg, 576), w)
    assert to_groups(w, -1).shape == (2, 576)
