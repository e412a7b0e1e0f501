"""Int4 layers kept packed in memory and multiplied by torch's CPU int4 kernel.

``torch.ops.aten._convert_weight_to_int4pack_for_cpu`` takes the (out, in) int32 codes (0..15) and
returns them two per byte; ``_weight_int4pack_mm_for_cpu(x, packed, group, scale_and_zero)`` computes
``x @ w.T`` with ``w = (code - 8) * scale + zero`` per group, ``scale_and_zero`` being (groups, out, 2)
bfloat16. Our ``w = scale * (code - zp)`` is that with ``zero = (8 - zp) * scale``. The kernel runs in
bfloat16 (its float32 path is ~25x slower), so activations are cast in and the result cast back.

Kernel limits the module bridges: the group must be 32, 64, 128 or 256 (a larger multiple of 32, a
per-channel scale, and a group that does not divide ``in`` are the same scale repeated over smaller
kernel groups), ``in`` a multiple of the kernel group (else padded with zero columns and the input with
zeros) and ``out`` a multiple of 16 (zero rows, cut from the output).

Memory: the kernel's pair costs 4 bytes per kernel group and row, 0.125 byte per weight at kernel group 32
(0.31x bf16 in all). A symmetric layer's zero half is 0, so at kernel group 32 the module keeps only the bf16
scales (0.28x) and builds the pair in a temporary in each forward. That costs one small op per forward
(benchmarks/RESULTS.md, "int4 scale storage"), so larger kernel groups, where the pair is half as big or less,
and asymmetric layers (whose zero half has to be computed) keep the kernel's pair.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from ..quant.types import QuantizedWeight

__all__ = ["PackedInt4Linear", "KERNEL_GROUPS", "COMPACT_KERNEL_GROUP", "int4_kernel_group", "pack_int4",
           "scales_with_zero_half"]

KERNEL_GROUPS = (256, 128, 64, 32)  # what _weight_int4pack_mm_for_cpu accepts, largest first
GROUP_MULTIPLE = 32  # a layer's group size must be a multiple of this (or span the whole row)
_ROW_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu wants out % 16 == 0
COMPACT_KERNEL_GROUP = 32  # symmetric layers at this kernel group keep scales only (the zero half is 0)


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def int4_kernel_group(group_size: int, in_features: int) -> tuple[int, int] | None:
    """(kernel group, padded in_features) for a layer, or None when its groups cannot be expressed.

    The kernel group divides the layer's group and pads ``in_features`` the least (the largest such): a
    group-128 layer of width 576 runs as group 64 with each scale twice (no padded columns to read and no
    pad of the input in every forward, and fewer bytes than padding to 640)."""
    if group_size >= in_features:  # one scale per row: any kernel group that tiles the padded row
        padded = _ceil_to(in_features, GROUP_MULTIPLE)
        return next(g for g in KERNEL_GROUPS if padded % g == 0), padded
    if group_size % GROUP_MULTIPLE:
        return None
    group = min((g for g in KERNEL_GROUPS if group_size % g == 0), key=lambda g: (_ceil_to(in_features, g), -g))
    return group, _ceil_to(in_features, group)


def pack_int4(qw: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(packed codes, scale_and_zero, kernel group, padded in_features) of a 4-bit layer."""
    if qw.bits != 4:
        raise ValueError(f"pack_int4 takes 4-bit codes, got {qw.bits}-bit")
    out_f, in_f = qw.shape
    found = int4_kernel_group(qw.group_size, in_f)
    if found is None:
        raise ValueError(f"group_size {qw.group_size} is not a multiple of {GROUP_MULTIPLE}: the int4 kernel cannot "
                         f"run it")
    group, padded_in = found
    padded_out = _ceil_to(out_f, _ROW_MULTIPLE)
    codes = torch.zeros(padded_out, padded_in, dtype=torch.int32)
    codes[:out_f, :in_f] = qw.codes.to(torch.int32)
    repeat = (padded_in if qw.scale.shape[1] == 1 else qw.group_size) // group
    kernel_groups = padded_in // group  # the last layer group may end inside the padding, or before it
    scale = qw.scale.float().repeat_interleave(repeat, 1)[:, :kernel_groups]  # (out, kernel_groups)
    zero = (8.0 - qw.zero.float().repeat_interleave(repeat, 1)[:, :kernel_groups]) * scale
    pair = torch.zeros(padded_out, padded_in // group, 2)
    pair[:out_f, :, 0], pair[:out_f, :, 1] = scale, zero
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    return packed, pair.transpose(0, 1).contiguous().to(torch.bfloat16), group, padded_in


def scales_with_zero_half(scales: torch.Tensor) -> torch.Tensor:
    """(groups, out, 2) bfloat16 pairs (scale, 0) from (groups, out) bfloat16 scales, in one contiguous op.

    Zero-extending each scale's 16 bits to 32 is, in little-endian memory, the bfloat16 pair (scale, +0.0);
    this is one vectorized conversion where padding a trailing dimension of 1 is a slow strided copy."""
    if sys.byteorder != "little":
        return F.pad(scales.unsqueeze(-1), (0, 1))
    return scales.view(torch.uint16).to(torch.int32).view(torch.bfloat16).view(*scales.shape, 2)


class PackedInt4Linear(torch.nn.Module):
    """A 4-bit Linear whose codes stay packed: half a byte per weight plus 4 bytes per kernel group and row (2 for
    a symmetric layer at kernel group 32)."""

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None, dtype: torch.dtype,
                 keep_codes: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.bits, self.group_size, self.sym = qw.bits, qw.group_size, qw.sym
        packed, pair, self.kernel_group, self.padded_in = pack_int4(qw)
        self.register_buffer("packed", packed, persistent=False)
        compact = self.kernel_group == COMPACT_KERNEL_GROUP and not bool(pair[..., 1].any())
        self.register_buffer("scale_and_zero", None if compact else pair, persistent=False)  # (groups, out, 2)
        self.register_buffer("scales", pair[..., 0].contiguous() if compact else None, persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype), persistent=False)
        self.quantized = qw if keep_codes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.padded_in > self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.kernel_group, self._pair())
        y = y[:, : self.out_features].to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def _pair(self) -> torch.Tensor:
        """The kernel's (groups, out, 2) scale-and-zero: kept, or built from the scales with a zero half."""
        if self.scales is None:
            return self.scale_and_zero
        return scales_with_zero_half(self.scales)

    @property
    def weight(self) -> torch.Tensor:
        """The (out, in) weight as the kernel sees it (bfloat16), for code that reads ``.weight``; computed."""
        eye = torch.eye(self.padded_in, dtype=torch.bfloat16, device=self.packed.device)
        w_t = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.kernel_group, self._pair())
        return w_t[: self.in_features, : self.out_features].t()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group_size="
                f"{self.group_size}, kernel_group={self.kernel_group}, sym={self.sym}, bias={self.bias is not None}")
