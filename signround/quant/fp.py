"""Element rounding of the small float formats (FP4 E2M1, FP8 E4M3 and E5M2) and their codes.

One arithmetic rule serves every format, written out instead of calling ``tensor.to(float8_*)`` so it
runs on any device and for E2M1, which torch has no dtype for (AutoRound reference §4.1
``quant_element``; OCP MX spec §5.3). For ``|x|`` with binary exponent ``p = floor(log2|x|)`` (never
below the smallest normal exponent ``1 - bias``) the grid step is ``2**(p - mbits)``; ``|x| / step`` is
rounded half to even (the hardware casts' rule) and values past the largest finite one **saturate** to
it (a cast would give NaN or inf). Tests compare E4M3/E5M2 with ``torch.float8_e4m3fn``/``float8_e5m2``
casts on every finite input in range, and E2M1 with its 16-code table.

Codes follow ``quant/fp_types.py``. A value that rounds to zero gets the **positive** zero code (0, not
8 or 0x80): a weight of -0.0 or -1e-9 stores as +0, which dequantizes to the same number.

Straight-through rounding (``ste``) returns the rounded value *exactly* in the forward pass (``q + (x -
x.detach())``), so a tuned weight equals the dequantized codes bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ElementFormat", "E2M1", "E4M3", "E5M2", "round_element", "ste", "fp4_codes", "fp8_codes",
           "check_finite", "pow2", "floor_log2", "rne", "element_max", "quantize_elements", "encode_elements"]


@dataclass(frozen=True)
class ElementFormat:
    """A sign + ``ebits`` exponent + ``mbits`` mantissa float, saturating at ``max_value``."""

    name: str
    ebits: int
    mbits: int
    max_value: float

    @property
    def min_exponent(self) -> int:
        """The exponent of the smallest normal value (subnormals share its step)."""
        return 2 - 2 ** (self.ebits - 1)

    @property
    def emax(self) -> int:
        """``floor(log2(max_value))``: the exponent of the largest binade."""
        return math.floor(math.log2(self.max_value))


E2M1 = ElementFormat("e2m1", 2, 1, 6.0)
E4M3 = ElementFormat("e4m3", 4, 3, 448.0)  # float8_e4m3fn: no inf, 0x7f/0xff are NaN
E5M2 = ElementFormat("e5m2", 5, 2, 57344.0)


def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """``floor(log2(a))`` exactly, as int32, for positive finite float32 ``a`` (subnormals too); 0 gives -149."""
    _, e = torch.frexp(a.float())  # a = m * 2**e, m in [0.5, 1)
    return torch.where(a > 0, e.to(torch.int32) - 1, torch.full_like(e, -149, dtype=torch.int32))


def pow2(e: torch.Tensor) -> torch.Tensor:
    """``2.0 ** e`` as exact float32 for integer ``e`` in [-127, 127] (built from bits, no exp2 rounding)."""
    e = e.to(torch.int32)
    normal = ((e.clamp(min=-126) + 127) << 23).view(torch.float32)
    return torch.where(e < -126, normal * 0.5, normal)  # 2**-127 is a float32 subnormal, exact


_RNE_MAGIC = 1.5 * 2.0**23  # float32 x + this - this == round half to even for |x| < 2**22


def rne(x: torch.Tensor) -> torch.Tensor:
    """Round half to even of float32 ``x`` with ``|x| < 2**22`` (the small scaled values element rounding sees).

    Same values as ``torch.round``, computed with two additions: on some CPU builds ``torch.round`` runs
    ~1000x slower than an addition, which made the 102-candidate NVFP4 search take seconds per layer.
    """
    return (x + _RNE_MAGIC) - _RNE_MAGIC


def round_element(x: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """``x`` (float32) rounded half to even onto ``fmt``'s grid, saturating at ``±fmt.max_value``."""
    x = x.float()
    a = x.abs().clamp_(max=fmt.max_value)
    # 2**p of each |x| (p never below the smallest normal exponent): the exponent bits, mantissa cleared.
    binade = (a.clamp(min=2.0**fmt.min_exponent).view(torch.int32) & 0x7F800000).view(torch.float32)
    step = binade.mul_(2.0**-fmt.mbits)
    q = rne(a.div_(step)).mul_(step).clamp_(max=fmt.max_value)  # a / step: exact (a power of two), <= 2**4
    return torch.copysign(q, x)


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` in the forward pass (exactly), the gradient of ``x`` in the backward pass."""
    if not x.requires_grad:
        return q
    return q.detach() + (x - x.detach())


# E2M1 magnitude index by 2 * |value|: 0, 0.5, 1, 1.5, 2, 3, 4, 6 -> 0..7 (-1: not on the grid).
_FP4_INDEX = torch.tensor([0, 1, 2, 3, 4, -1, 5, -1, 6, -1, -1, -1, 7], dtype=torch.uint8)


def fp4_codes(values: torch.Tensor) -> torch.Tensor:
    """E2M1 values (already on the grid) -> uint8 codes ``sign << 3 | magnitude index``; zero is code 0."""
    mag = _FP4_INDEX.to(values.device)[(values.abs().float() * 2).long()]
    return mag | (values < 0).to(torch.uint8) << 3


def fp8_codes(values: torch.Tensor) -> torch.Tensor:
    """E4M3 values (already on the grid) -> uint8 ``float8_e4m3fn`` bit patterns; zero is code 0, never 0x80."""
    v = torch.where(values == 0, torch.zeros_like(values), values.float())
    return v.to(torch.float8_e4m3fn).view(torch.uint8)


def _float_format(data_type: str, bits: int) -> ElementFormat | None:
    if data_type == "mx_int":
        return None
    if bits == 4 and data_type in ("mx_fp", "mx_fp_rceil", "nv_fp"):
        return E2M1
    if bits == 8 and data_type in ("mx_fp", "mx_fp_rceil", "fp"):
        return E4M3
    raise ValueError(f"no {bits}-bit elements for data_type {data_type!r}")


def element_max(data_type: str, bits: int) -> float:
    """The largest element magnitude: 6 (E2M1), 448 (E4M3), ``(2**(bits-1) - 1) / 2**(bits-2)`` (MX int)."""
    fmt = _float_format(data_type, bits)
    return fmt.max_value if fmt is not None else (2 ** (bits - 1) - 1) / 2 ** (bits - 2)


def quantize_elements(y: torch.Tensor, data_type: str, bits: int) -> torch.Tensor:
    """Scaled values ``y`` rounded (half to even, saturating) onto the data type's element grid (no gradient)."""
    fmt = _float_format(data_type, bits)
    if fmt is not None:
        return round_element(y, fmt)
    unit = 2.0 ** (bits - 2)  # MX int: q / 2**(bits-2), |q| <= 2**(bits-1) - 1
    qmax = 2 ** (bits - 1) - 1
    return rne(y.float().mul(unit).clamp_(-qmax - 1, qmax + 1)).clamp_(-qmax, qmax).div_(unit)


def encode_elements(values: torch.Tensor, data_type: str, bits: int) -> torch.Tensor:
    """Element values (on the grid) -> uint8 codes in ``fp_types.py``'s convention."""
    fmt = _float_format(data_type, bits)
    if fmt is E2M1:
        return fp4_codes(values)
    if fmt is E4M3:
        return fp8_codes(values)
    q = (values.float() * 2.0 ** (bits - 2)).to(torch.int16)  # exact integers already
    return (q & (2**bits - 1)).to(torch.uint8)  # two's complement in the low ``bits`` bits


FINITE_CHUNK = 1 << 24  # elements checked at once: the mask stays 16 MB


def check_finite(x: torch.Tensor, name: str, what: str = "weight") -> None:
    """A ValueError naming ``name`` when ``x`` holds NaN or inf (checked in slices)."""
    flat = x.detach().reshape(-1)
    for i in range(0, flat.numel(), FINITE_CHUNK):
        part = flat[i:i + FINITE_CHUNK]
        if not bool(torch.isfinite(part).all()):
            bad = int((~torch.isfinite(part)).sum())
            raise ValueError(f"{name}: the {what} holds NaN/inf ({bad} non-finite value(s) in elements "
                             f"{i}..{i + part.numel() - 1}); it cannot be quantized")
