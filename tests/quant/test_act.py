"""Activation fake quantization: per token / group / tensor, dynamic and static, every data type, gradients pass."""

from __future__ import annotations

import pytest
import torch

from signround.quant.act import activation_max, fake_quantize_activation
from signround.quant.fp import E4M3, round_element
from signround.quant.fp8 import to_blocks
from signround.quant.mx import mx_quantize
from signround.quant.nvfp import nv_global_scale, nv_quantize
from signround.schemes import QuantScheme, resolve_scheme

GEN = torch.Generator().manual_seed(0)


def _x(*shape):
    return torch.randn(*shape, generator=GEN) * 3


def test_int8_per_token_sym_is_absmax_over_127():
    x = _x(4, 7, 64)
    y = fake_quantize_activation(x, resolve_scheme("INT8_W8A8"))
    s = x.abs().amax(-1, keepdim=True) / 127
    assert torch.equal(y, torch.round(x / s).clamp(-128, 127) * s)


def test_int4_asym_per_group_has_an_integer_zero_point():
    scheme = QuantScheme(bits=4, group_size=32, sym=False, act_bits=4)
    x = _x(3, 64) + 2.0
    y = fake_quantize_activation(x, scheme)
    g = x.reshape(-1, 32)
    lo, hi = g.amin(1, keepdim=True).clamp(max=0), g.amax(1, keepdim=True).clamp(min=0)
    s = (hi - lo) / 15
    z = torch.round(-lo / s)
    want = ((torch.round(g / s) + z).clamp(0, 15) - z) * s
    assert torch.equal(y, want.reshape(3, 64))
    assert (y - x).abs().max() <= s.max() / 2 + 1e-6


def test_mx_and_nvfp4_act_equal_the_weight_numerics_on_rows():
    x = _x(5, 96)
    y = fake_quantize_activation(x, resolve_scheme("MXFP4"))
    assert torch.equal(y, mx_quantize(x.reshape(-1, 32), "mx_fp", 4)[0].reshape(5, 96))
    y = fake_quantize_activation(x, resolve_scheme("MXFP4_RCEIL"))
    assert torch.equal(y, mx_quantize(x.reshape(-1, 32), "mx_fp_rceil", 4)[0].reshape(5, 96))
    y = fake_quantize_activation(x, resolve_scheme("MXINT4"))
    assert torch.equal(y, mx_quantize(x.reshape(-1, 32), "mx_int", 4)[0].reshape(5, 96))
    # NVFP4 (static global scale) without a calibrated max: the input's own amax
    y = fake_quantize_activation(x, resolve_scheme("NVFP4"))
    gs = nv_global_scale(x.abs().max())
    assert torch.equal(y, nv_quantize(x.reshape(-1, 16), gs)[0].reshape(5, 96))


def test_nvfp4_static_global_scale_comes_from_static_max():
    x = _x(5, 32)
    static = torch.tensor(50.0)
    y = fake_quantize_activation(x, resolve_scheme("NVFP4"), static)
    assert torch.equal(y, nv_quantize(x.reshape(-1, 16), nv_global_scale(static))[0].reshape(5, 32))
    assert not torch.equal(y, fake_quantize_activation(x, resolve_scheme("NVFP4")))


def test_fp8_static_per_tensor_and_dynamic_block_group():
    x = _x(6, 256)
    static = torch.tensor(20.0)
    y = fake_quantize_activation(x, resolve_scheme("FP8_STATIC"), static)
    s = torch.tensor(20.0 / 448)
    assert torch.equal(y, round_element(x / s, E4M3) * s)
    y = fake_quantize_activation(x, resolve_scheme("FP8_BLOCK"))  # dynamic, groups of 128 along the row
    g = x.reshape(-1, 128)
    s = g.abs().amax(1, keepdim=True) / 448
    assert torch.equal(y, (round_element(g / s, E4M3) * s).reshape(6, 256))


def test_int_static_per_tensor_uses_static_max_over_qmax():
    scheme = QuantScheme(bits=8, group_size=-1, act_bits=8, act_group_size=0, act_dynamic=False)
    x = _x(4, 32)
    y = fake_quantize_activation(x, scheme, torch.tensor(4.0))
    s = torch.tensor(4.0) / 127
    assert torch.equal(y, torch.round(x / s).clamp(-128, 127) * s)  # beyond 4.0 clips


def test_per_tensor_dynamic_group_zero():
    scheme = resolve_scheme("INT8_W8A8").replace(act_group_size=0)
    x = _x(2, 3, 16)
    s = x.abs().max() / 127
    assert torch.equal(fake_quantize_activation(x, scheme), torch.round(x / s).clamp(-128, 127) * s)


@pytest.mark.parametrize("preset", ["MXFP4", "NVFP4", "MXFP8", "INT8_W8A8", "FP8_BLOCK", "MXINT4"])
def test_gradient_passes_straight_through_and_dtype_is_kept(preset):
    x = _x(2, 4, 128).to(torch.bfloat16).requires_grad_(True)
    y = fake_quantize_activation(x, resolve_scheme(preset))
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    (y.float() * 3).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))
    with torch.no_grad():
        assert torch.equal(y, fake_quantize_activation(x.detach(), resolve_scheme(preset)))
        assert not torch.equal(y, x)


def test_zeros_and_wide_ranges_stay_finite():
    for preset in ("MXFP4", "NVFP4", "MXFP8", "INT8_W8A8", "FP8_BLOCK", "MXINT4"):
        z = torch.zeros(3, 128)
        assert torch.equal(fake_quantize_activation(z, resolve_scheme(preset)), z), preset
        x = _x(3, 128)
        x[0, 0] = 1e30
        x[1] = 1e-30
        assert torch.isfinite(fake_quantize_activation(x, resolve_scheme(preset))).all(), preset


def test_sixteen_bit_activations_are_untouched():
    x = _x(3, 32)
    assert fake_quantize_activation(x, resolve_scheme("W4A16")) is x
    assert fake_quantize_activation(x, resolve_scheme("MXFP4", act_bits=16)) is x


def test_errors_name_the_problem():
    x = _x(3, 32)
    with pytest.raises(ValueError, match="static_max"):
        fake_quantize_activation(x, resolve_scheme("FP8_STATIC"))
    with pytest.raises(ValueError, match="dynamically"):
        fake_quantize_activation(x, resolve_scheme("MXFP4"), torch.tensor(1.0))
    with pytest.raises(ValueError, match="one finite max"):
        fake_quantize_activation(x, resolve_scheme("FP8_STATIC"), torch.tensor(float("nan")))
    x[1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        fake_quantize_activation(x, resolve_scheme("MXFP4"))


def test_activation_max():
    x = torch.tensor([[1.0, -7.5], [3.0, 2.0]], dtype=torch.bfloat16)
    m = activation_max(x)
    assert m.dtype == torch.float32 and m.dim() == 0 and m.item() == 7.5
    assert activation_max(torch.zeros(0, 4)).item() == 0.0
    assert torch.equal(to_blocks(torch.ones(2, 3), (2, 3)), torch.ones(1, 6))
