"""OCP microscaling (MX): a power-of-two E8M0 scale shared by each group of 32 elements.

AutoRound reference §4.1 (``quant_mx``, ``quant_mx_rceil``); OCP MX spec v1.0 §6.3. For a group with
``m = max|x| * range``:

- **floor** (``mx_fp``, ``mx_int``; the OCP rule): ``E = floor(log2 m) - emax`` with ``emax`` the element
  format's largest exponent (2 for E2M1, 8 for E4M3, 0 for MX int). ``m / 2**E`` lies in ``[2**emax,
  2**(emax+1))``, so a group maximum above the element maximum (6, 448, 1.75) saturates.
- **rceil** (``mx_fp_rceil``): ``E = ceil(log2(m / max_element))``, the smallest scale at which nothing
  saturates.

``E`` is clamped to [-127, 127] (the E8M0 byte range less NaN); an all-zero group gets ``2**-127`` and
zero codes. Both exponents are computed exactly from the float bits (``frexp``), never through a
rounded ``log2``. Elements are ``quantize_elements(x / 2**E + v)`` (``quant/fp.py``).

Tuning (SignRound): ``v`` is the rounding offset, ``range`` a per-group multiplier of ``m``. The floor/
ceil of the exponent is straight-through: its gradient is that of the unrounded scale ``m / 2**emax``.
Shapes: grouped values ``xg`` (n_groups, 32); per-group tensors (n_groups, 1).
"""

from __future__ import annotations

import torch

from .fp import element_max, floor_log2, pow2, quantize_elements, ste

__all__ = ["MX_DATA_TYPES", "E8M0_MIN", "E8M0_MAX", "element_emax", "mx_exponent", "mx_scale", "mx_quantize"]

MX_DATA_TYPES = ("mx_fp", "mx_fp_rceil", "mx_int")
E8M0_MIN, E8M0_MAX = -127, 127


def element_emax(data_type: str, bits: int) -> int:
    """``floor(log2(max element))``: 2 for E2M1 (6), 8 for E4M3 (448), 0 for MX int (1.75, 1.98)."""
    return int(floor_log2(torch.tensor(element_max(data_type, bits))))


def mx_exponent(m: torch.Tensor, data_type: str, bits: int) -> torch.Tensor:
    """The shared exponent E (int32) of each group from its (range-scaled) max ``m`` >= 0 (module docstring)."""
    if data_type not in MX_DATA_TYPES:
        raise ValueError(f"MX data types are {', '.join(MX_DATA_TYPES)}, got {data_type!r}")
    m = m.detach().float()
    emax = element_emax(data_type, bits)
    e = floor_log2(m) - emax
    if data_type == "mx_fp_rceil":
        # Smallest E with max_element * 2**E >= m: floor's E, one more where that still saturates (exact).
        maxe = element_max(data_type, bits)
        e = torch.where(maxe * pow2(e.clamp(E8M0_MIN, E8M0_MAX)) < m, e + 1, e)
    e = torch.where(m > 0, e, torch.full_like(e, E8M0_MIN))
    return e.clamp(E8M0_MIN, E8M0_MAX)


def mx_scale(amax: torch.Tensor, data_type: str, bits: int, rng: torch.Tensor | None = None) -> torch.Tensor:
    """The power-of-two scale of each group (float32, exact), straight-through in ``rng``."""
    m = amax if rng is None else amax * rng
    exact = pow2(mx_exponent(m, data_type, bits))
    if not m.requires_grad:
        return exact
    soft = m / (element_max(data_type, bits) if data_type == "mx_fp_rceil" else 2.0 ** element_emax(data_type, bits))
    return ste(soft, exact)


def mx_quantize(
    xg: torch.Tensor,
    data_type: str,
    bits: int,
    rng: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quant-dequant of groups ``xg`` (n, 32): returns (x_hat, element values, scale (n, 1)).

    ``x_hat == elements * scale`` exactly; differentiable in ``v`` and ``rng`` (straight-through).
    """
    amax = xg.detach().abs().amax(dim=1, keepdim=True)  # (n, 1)
    scale = mx_scale(amax, data_type, bits, rng)
    y = xg / scale if v is None else xg / scale + v
    maxe = element_max(data_type, bits)
    y = y.clamp(-maxe, maxe)
    e = ste(y, quantize_elements(y.detach(), data_type, bits))
    return e * scale, e, scale
