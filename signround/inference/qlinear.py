"""QuantLinear, the ``dequant`` backend: unpack once at load, then run a plain dense matmul.

AutoRound's "torch" backend re-dequantizes the whole weight on every forward (reference §6); here
the codes are dequantized a single time into the compute dtype, so a forward costs exactly what the
float model's does. The integer codes are kept (``quantized``) for re-export and conversion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..quant.types import QuantizedWeight

__all__ = ["QuantLinear"]


class QuantLinear(torch.nn.Module):
    """A Linear whose weight is the dequantization of ``QuantizedWeight`` codes (computed once)."""

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None, dtype: torch.dtype,
                 keep_codes: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.bits, self.group_size, self.sym = qw.bits, qw.group_size, qw.sym
        self.register_buffer("weight", qw.dequantize(torch.float32).to(dtype), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype), persistent=False)
        self.quantized = qw if keep_codes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, sym={self.sym}, bias={self.bias is not None}")
