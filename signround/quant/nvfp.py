"""NVFP4: E2M1 elements, an FP8 E4M3 scale per 16 elements, one fp32 global scale per tensor.

AutoRound reference §4.2 (``data_type/nvfp.py``); the NVIDIA/compressed-tensors layout:

- ``global_scale = 448 * 6 / amax(tensor)`` (fp32): it maps the tensor's largest magnitude onto the
  largest block scale (448) times the largest element (6). Layers that serving engines fuse (q/k/v,
  gate/up) share one, the smallest of theirs (``shared_amax`` in ``tune/fp_layer.py``).
- per 16-group: ``s = global_scale * amax_g * range / 6`` clamped to ``[2**-9, 448]`` (the E4M3 range:
  2**-9 is its smallest subnormal) and rounded to E4M3 (``s8``);
- elements ``fp4(x * (global_scale / s8) + v)``; dequantized ``fp4 * (s8 / global_scale)``: the form
  ``FPQuantized.dequantize`` computes, so a tuned weight equals its codes bit for bit.

A block of small weights far below the tensor maximum has its scale clamped to 2**-9; its elements
still stay within ±6 because ``x * global_scale <= 448 * 6 * amax_g / amax``.
Shapes: grouped values ``xg`` (n_groups, 16); per-group tensors (n_groups, 1).
"""

from __future__ import annotations

import torch

from .fp import E2M1, E4M3, round_element, ste

__all__ = ["NV_SCALE_MIN", "NV_SCALE_MAX", "AMAX_MIN", "nv_global_scale", "nv_block_scale", "nv_quantize"]

NV_SCALE_MIN = 2.0**-9  # the smallest positive E4M3 value
NV_SCALE_MAX = E4M3.max_value
AMAX_MIN = 1e-30  # an all-zero tensor gets the finite global scale 2688 / AMAX_MIN


def nv_global_scale(amax: torch.Tensor) -> torch.Tensor:
    """``448 * 6 / amax`` as a 0-d float32 (``amax`` 0-d; an all-zero tensor gets ``2688 / AMAX_MIN``)."""
    return (E4M3.max_value * E2M1.max_value / amax.detach().float().clamp(min=AMAX_MIN)).reshape(())


def nv_block_scale(amax_g: torch.Tensor, global_scale: torch.Tensor, rng: torch.Tensor | None = None) -> torch.Tensor:
    """The E4M3 scale of each 16-group (float32 values that are E4M3 values), straight-through in ``rng``."""
    m = amax_g if rng is None else amax_g * rng
    s = (global_scale * m / E2M1.max_value).clamp(NV_SCALE_MIN, NV_SCALE_MAX)
    return ste(s, round_element(s.detach(), E4M3))


def nv_quantize(
    xg: torch.Tensor,
    global_scale: torch.Tensor,
    rng: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quant-dequant of groups ``xg`` (n, 16) under ``global_scale``: returns (x_hat, FP4 values, s8 (n, 1))."""
    amax = xg.detach().abs().amax(dim=1, keepdim=True)  # (n, 1)
    s8 = nv_block_scale(amax, global_scale, rng)
    y = xg * (global_scale / s8)
    y = (y if v is None else y + v).clamp(-E2M1.max_value, E2M1.max_value)
    e = ste(y, round_element(y.detach(), E2M1))
    return e * (s8 / global_scale), e, s8
