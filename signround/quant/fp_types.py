"""The result of quantizing one weight matrix to a floating-point or microscaling data type.

The FP counterpart of ``QuantizedWeight``: element codes plus the scales that multiply them, and
nothing else. Exporters turn the scales into their stored forms (E8M0 bytes, FP8 E4M3, fp32);
this object keeps their exact values as float32, so every format writes the same numbers.

Element codes (uint8, one per weight):

- FP4 E2M1 (``mx_fp``/``mx_fp_rceil``/``nv_fp``, 4 bits): ``sign << 3 | m`` with ``m`` indexing the
  magnitudes ``0, 0.5, 1, 1.5, 2, 3, 4, 6`` (the OCP code, as packed by every FP4 format);
- FP8 E4M3 (``mx_fp``/``fp``, 8 bits): the ``torch.float8_e4m3fn`` bit pattern;
- MX int (``mx_int``): the ``bits``-bit two's complement integer ``q`` (``|q| <= 2**(bits-1) - 1``),
  whose element value is ``q / 2**(bits-2)`` (MXINT8 is 1.6 fixed point, MXINT4 1.2).

Dequantized weight: ``w = element(codes) * scale[row // group_rows, col // group_size] / global_scale``
(``global_scale`` is NVFP4's per-tensor fp32 factor, 1 for the others).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FPQuantized", "FP4_MAGNITUDES", "element_values", "FP_DATA_TYPES"]

FP4_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # E2M1 magnitudes by code (bits 0..2)
FP_DATA_TYPES = ("mx_fp", "mx_fp_rceil", "mx_int", "nv_fp", "fp")

_FP4_TABLE = torch.tensor([*FP4_MAGNITUDES, *(-m for m in FP4_MAGNITUDES)], dtype=torch.float32)


def element_values(codes: torch.Tensor, data_type: str, bits: int) -> torch.Tensor:
    """The float32 value of every element code (module docstring), before scaling."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"element codes must be uint8, got {codes.dtype}")
    if data_type == "mx_int":
        q = codes.to(torch.int16) & (2**bits - 1)
        q = torch.where(q >= 2 ** (bits - 1), q - 2**bits, q)
        return q.float() / 2 ** (bits - 2)
    if bits == 4 and data_type in ("mx_fp", "mx_fp_rceil", "nv_fp"):
        return _FP4_TABLE[(codes & 15).long()]
    if bits == 8 and data_type in ("mx_fp", "mx_fp_rceil", "fp"):
        return codes.view(torch.float8_e4m3fn).float()
    raise ValueError(f"no {bits}-bit elements for data_type {data_type!r}")


def _blocks(n: int, size: int) -> int:
    return -(-n // size)


@dataclass(frozen=True)
class FPQuantized:
    """FP/MX element codes with their scales (module docstring).

    - ``codes``: (out, in) uint8
    - ``scale``: (ceil(out / group_rows), ceil(in / group_size)) float32, the exact multipliers
      (powers of two for MX, FP8 E4M3 values for NVFP4, any positive fp32 for FP8)
    - ``global_scale``: 0-d float32 (NVFP4) or None
    ``group_size`` and ``group_rows`` are the effective positive block sizes (``in`` and ``out`` for a
    per-tensor scale, ``in`` and 1 for per channel).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    data_type: str
    bits: int
    group_size: int
    group_rows: int = 1
    global_scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.data_type not in FP_DATA_TYPES:
            raise ValueError(f"data_type must be one of {', '.join(FP_DATA_TYPES)}, got {self.data_type!r}")
        if self.codes.dtype != torch.uint8 or self.codes.dim() != 2:
            raise TypeError(f"codes must be a 2-D uint8 tensor, got {self.codes.dtype} {tuple(self.codes.shape)}")
        out_f, in_f = self.codes.shape
        want = (_blocks(out_f, self.group_rows), _blocks(in_f, self.group_size))
        if tuple(self.scale.shape) != want:
            raise ValueError(f"scale {tuple(self.scale.shape)} must be {want} for codes {tuple(self.codes.shape)}, "
                             f"group_size {self.group_size} and group_rows {self.group_rows}")
        if (self.global_scale is not None) != (self.data_type == "nv_fp"):
            raise ValueError(f"global_scale is NVFP4's (data_type nv_fp) and only its; got data_type {self.data_type} "
                             f"with global_scale {'set' if self.global_scale is not None else 'None'}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    @property
    def sym(self) -> bool:
        return True

    def expanded_scale(self) -> torch.Tensor:
        """(out, in) float32: each weight's multiplier, the global scale divided out."""
        out_f, in_f = self.codes.shape
        s = self.scale.float().repeat_interleave(self.group_rows, 0)[:out_f]
        s = s.repeat_interleave(self.group_size, 1)[:, :in_f]
        return s / self.global_scale.float() if self.global_scale is not None else s

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (element_values(self.codes, self.data_type, self.bits) * self.expanded_scale()).to(dtype)

    def to(self, device: "torch.device | str") -> "FPQuantized":
        gs = None if self.global_scale is None else self.global_scale.to(device)
        return FPQuantized(self.codes.to(device), self.scale.to(device), self.data_type, self.bits, self.group_size,
                           self.group_rows, gs)
