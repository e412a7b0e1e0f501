"""The result of quantizing one weight matrix: integer codes are the source of truth.

Exporters consume this object and nothing else about a layer's numbers; nothing downstream
re-derives codes by dividing a fake-quantized weight by its scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .grouping import expand_groups, num_groups

__all__ = ["QuantizedWeight"]


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer weight codes with per-group scales and zero points.

    Tensor data attributes (``out`` = output features, ``in`` = input features, ``G = ceil(in / group_size)``):

    - ``codes``: (out, in) uint8, unsigned codes in ``[0, 2**bits)``
    - ``scale``: (out, G) float32, exactly representable in float16; may be negative (full-range sym)
    - ``zero``:  (out, G) uint8 integer zero points; ``2**(bits-1)`` everywhere when ``sym``

    Dequantized weight: ``w[o, i] = scale[o, i // group_size] * (codes[o, i] - zero[o, i // group_size])``.
    ``group_size`` here is the effective, positive group width (``in`` for per-channel/per-tensor schemes).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int
    sym: bool

    def __post_init__(self) -> None:
        out_f, in_f = self.codes.shape
        g = num_groups(self.group_size, in_f)
        if self.codes.dtype != torch.uint8:
            raise TypeError(f"codes must be uint8, got {self.codes.dtype}")
        if tuple(self.scale.shape) != (out_f, g) or tuple(self.zero.shape) != (out_f, g):
            raise ValueError(
                f"scale {tuple(self.scale.shape)} and zero {tuple(self.zero.shape)} must both be ({out_f}, {g}) "
                f"for codes {tuple(self.codes.shape)} and group_size {self.group_size}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        in_f = self.codes.shape[1]
        scale = expand_groups(self.scale.float(), self.group_size, in_f)
        zero = expand_groups(self.zero.float(), self.group_size, in_f)
        return (scale * (self.codes.float() - zero)).to(dtype)  # (out, in)
