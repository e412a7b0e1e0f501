"""Layers no CPU kernel multiplies (2/3-bit int, FP4/FP8/MX/NVFP4, any int at float32): codes kept packed,
the weight dequantized in every forward and dropped after it.

Codes are stored ``8 // slot`` per byte along the input dimension (slot = 2 bits for 2-bit codes, 4 for
3- and 4-bit ones, 8 otherwise; 3-bit codes waste a quarter of their slot for a branch-free unpack).
The forward rebuilds the layer's ``QuantizedWeight``/``FPQuantized`` and calls its own ``dequantize``,
so the weight is bit-identical to the dequantize-once backend's and so are the logits: this backend
trades speed for memory, never precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..quant.fp_types import FPQuantized
from ..quant.types import QuantizedWeight

__all__ = ["DequantOnTheFlyLinear", "pack_slots", "unpack_slots", "slot_bits"]


def slot_bits(bits: int) -> int:
    """Bits each code occupies in the stored bytes."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def pack_slots(codes: torch.Tensor, slot: int) -> torch.Tensor:
    """(out, in) uint8 codes < 2**slot -> (out, ceil(in * slot / 8)) uint8, code j of a byte at bit j * slot."""
    per = 8 // slot
    out_f, in_f = codes.shape
    padded = torch.zeros(out_f, -(-in_f // per) * per, dtype=torch.uint8)
    padded[:, :in_f] = codes
    parts = padded.reshape(out_f, -1, per)
    packed = torch.zeros(parts.shape[:2], dtype=torch.uint8)
    for j in range(per):
        packed |= parts[..., j] << (j * slot)
    return packed


def unpack_slots(packed: torch.Tensor, slot: int, in_features: int) -> torch.Tensor:
    """Inverse of ``pack_slots``."""
    per = 8 // slot
    shifts = torch.arange(0, 8, slot, dtype=torch.uint8, device=packed.device)
    codes = (packed.unsqueeze(-1) >> shifts) & (2**slot - 1)
    return codes.reshape(packed.shape[0], -1)[:, :in_features].contiguous()


class DequantOnTheFlyLinear(torch.nn.Module):
    """A Linear holding packed codes and scales; the dense weight exists only inside ``forward``."""

    def __init__(self, qw: "QuantizedWeight | FPQuantized", bias: torch.Tensor | None, dtype: torch.dtype,
                 keep_codes: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.bits, self.group_size, self.sym = qw.bits, qw.group_size, qw.sym
        self.compute_dtype = dtype
        self.slot = slot_bits(qw.bits)
        self.register_buffer("packed", pack_slots(qw.codes, self.slot), persistent=False)
        self.register_buffer("scale", qw.scale, persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype), persistent=False)
        if isinstance(qw, FPQuantized):
            self.data_type, self.group_rows = qw.data_type, qw.group_rows
            self.register_buffer("zero", None, persistent=False)
            self.register_buffer("global_scale", qw.global_scale, persistent=False)
        else:
            self.data_type, self.group_rows = "int", 1
            self.register_buffer("zero", qw.zero, persistent=False)
            self.register_buffer("global_scale", None, persistent=False)
        self.quantized = qw if keep_codes else None

    def codes(self) -> "QuantizedWeight | FPQuantized":
        """The layer's codes object, rebuilt from the packed bytes."""
        codes = unpack_slots(self.packed, self.slot, self.in_features)
        if self.data_type == "int":
            return QuantizedWeight(codes, self.scale, self.zero, self.bits, self.group_size, self.sym)
        return FPQuantized(codes, self.scale, self.data_type, self.bits, self.group_size, self.group_rows,
                           self.global_scale)

    @property
    def weight(self) -> torch.Tensor:
        """The dense (out, in) weight, computed on each access (as the dequantize-once backend holds it)."""
        return self.codes().dequantize(torch.float32).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.compute_dtype), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"data_type={self.data_type}, group_size={self.group_size}, sym={self.sym}, bias={self.bias is not None}")
