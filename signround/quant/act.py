"""Activation fake quantization: a Linear's input quantized on its last dimension, as the serving kernel will.

AutoRound reference §4.4 (``WrapperLinear._qdq_act``). The scheme's resolved activation fields choose
everything: ``act_bits``, ``act_group`` (-1 per token = per row of the last dimension, 0 per tensor,
g > 0 groups of g along the last dimension), ``act_symmetric``, ``act_dtype`` and ``act_dynamic``.

- ``int``: sym ``scale = max|x| / (2**(bits-1) - 1)``, codes in ``[-2**(bits-1), 2**(bits-1) - 1]`` (what
  W8A8 int kernels do: absmax / 127); asym ``scale = (max - min) / (2**bits - 1)`` with an integer zero point.
- ``mx_fp``/``mx_fp_rceil``/``mx_int``: ``quant/mx.py`` per 32 (always dynamic).
- ``nv_fp``: ``quant/nvfp.py``; the global scale is ``448 * 6 / static_max`` (calibrated) or the input's own
  max when no ``static_max`` is given; the per-16 FP8 scales always come from the input.
- ``fp``: ``quant/fp8.py``, scale ``max / 448``.

Static (``act_dynamic=False``): ``static_max``, the 0-d max |x| the caller calibrated, replaces the
input's max (FP8 ``static_max / 448``, int ``static_max / qmax``). A dynamic scheme takes no ``static_max``.

Gradients pass straight through (the forward value is exactly the quantized input); activations have
no rounding offsets or range tunables. The result has the dtype of ``x``.
"""

from __future__ import annotations

import torch

from ..schemes import QuantScheme
from .fp import check_finite, rne
from .fp8 import block_shape, fp8_quantize, from_blocks, to_blocks
from .mx import MX_DATA_TYPES, mx_quantize
from .nvfp import nv_global_scale, nv_quantize

__all__ = ["fake_quantize_activation", "activation_max"]

ACT_SCALE_MIN = 1e-12  # an all-zero row keeps a finite int scale


def activation_max(x: torch.Tensor) -> torch.Tensor:
    """max |x| as a 0-d float32 (the statistic static activation scales are calibrated from)."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    lo, hi = torch.aminmax(x.detach())
    return torch.maximum(-lo, hi).float()


def _int_qdq(xg: torch.Tensor, bits: int, sym: bool, static_max: torch.Tensor | None) -> torch.Tensor:
    if sym:
        qmax = 2 ** (bits - 1) - 1
        amax = static_max if static_max is not None else xg.abs().amax(dim=1, keepdim=True)
        s = (amax / qmax).clamp(min=ACT_SCALE_MIN)
        return rne((xg / s).clamp_(-qmax - 1, qmax)) * s
    maxq = 2**bits - 1
    if static_max is not None:
        lo, hi = -static_max.expand(xg.shape[0], 1), static_max.expand(xg.shape[0], 1)
    else:
        lo = xg.amin(dim=1, keepdim=True).clamp(max=0)
        hi = xg.amax(dim=1, keepdim=True).clamp(min=0)
    s = ((hi - lo) / maxq).clamp(min=ACT_SCALE_MIN)
    z = rne((-lo / s).clamp_(0, maxq))
    return (rne((xg / s).clamp_(-maxq, maxq)) + z).clamp(0, maxq).sub(z) * s


@torch.no_grad()
def _qdq(x2: torch.Tensor, scheme: QuantScheme, static_max: torch.Tensor | None) -> torch.Tensor:
    """Quant-dequant of (N, K) float32 rows."""
    dtype, bits = scheme.act_dtype, scheme.act_bits
    block = block_shape(scheme.act_group, 1, tuple(x2.shape))
    xg = to_blocks(x2, block)  # (n_blocks, block numel)
    if dtype == "int":
        out = _int_qdq(xg, bits, scheme.act_symmetric, static_max)
    elif dtype in MX_DATA_TYPES:
        out = mx_quantize(xg, dtype, bits)[0]
    elif dtype == "nv_fp":
        gs = nv_global_scale(static_max if static_max is not None else activation_max(x2))
        out = nv_quantize(xg, gs)[0]
    elif dtype == "fp":
        out = fp8_quantize(xg, amax=static_max)[0]
    else:
        raise ValueError(f"no activation quantizer for act_data_type {dtype!r}")
    return from_blocks(out, block, tuple(x2.shape))


def fake_quantize_activation(x: torch.Tensor, scheme: QuantScheme, static_max: torch.Tensor | None = None
                             ) -> torch.Tensor:
    """``x`` (..., in_features) quantized and dequantized per ``scheme``'s activation fields (module docstring)."""
    if not scheme.quantizes_activations:
        return x
    if scheme.act_dynamic and static_max is not None:
        raise ValueError(f"scheme {scheme.short_name()} quantizes activations dynamically: static_max must be None")
    if not scheme.act_dynamic and static_max is None and scheme.act_dtype != "nv_fp":
        raise ValueError(f"scheme {scheme.short_name()} has static activations: pass the calibrated static_max "
                         f"(activation_max over the calibration inputs)")
    if static_max is not None:
        if static_max.numel() != 1 or not bool(torch.isfinite(static_max).all()) or float(static_max) < 0:
            raise ValueError(f"static_max must be one finite max |x| >= 0, got {static_max}")
        static_max = static_max.detach().float().reshape(()).to(x.device)
    check_finite(x, f"activation quantization ({scheme.short_name()})", what="input")
    if x.numel() == 0:
        return x
    x2 = x.detach().float().reshape(-1, x.shape[-1])  # (N, K)
    q = _qdq(x2, scheme, static_max).reshape(x.shape).to(x.dtype)
    return q + (x - x.detach()) if x.requires_grad else q
