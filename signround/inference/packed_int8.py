"""Int8 layers kept as int8 in memory and multiplied by torch's ``_weight_int8pack_mm``.

The kernel computes ``(x @ q.T) * scale`` for signed int8 ``q`` (out, in) and one scale per output row.
Our codes are unsigned with zero points, ``w = s * (c - zp) = s * (c - 128) + s * (128 - zp)``: the
signed codes are ``c - 128`` and the second term, zero for symmetric layers, is a rank-G correction
``x_g.sum() * s_g * (128 - zp_g)``. Per-group layers run the kernel once per group (the per-group
equivalent of the per-channel kernel); the last partial group is padded with zero columns, and each group
to a multiple of 16 columns (the kernel reads out of bounds otherwise: it crashes on in=100).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..quant.types import QuantizedWeight

__all__ = ["PackedInt8Linear"]

_COL_MULTIPLE = 16  # _weight_int8pack_mm needs in % 16 == 0


class PackedInt8Linear(torch.nn.Module):
    """An 8-bit Linear held as int8 codes (one byte per weight) plus per-group scales."""

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None, dtype: torch.dtype,
                 keep_codes: bool = False) -> None:
        super().__init__()
        if qw.bits != 8:
            raise ValueError(f"PackedInt8Linear takes 8-bit codes, got {qw.bits}-bit")
        self.out_features, self.in_features = qw.shape
        self.bits, self.group_size, self.sym = 8, qw.group_size, qw.sym
        groups = qw.scale.shape[1]
        self.group = self.in_features if groups == 1 else qw.group_size
        self.width = -(-self.group // _COL_MULTIPLE) * _COL_MULTIPLE  # stored columns per group
        padded = torch.zeros(self.out_features, groups * self.group, dtype=torch.int16)
        padded[:, : self.in_features] = qw.codes.to(torch.int16) - 128
        q = padded.reshape(self.out_features, groups, self.group)
        q = F.pad(q, (0, self.width - self.group)).to(torch.int8).transpose(0, 1).contiguous()
        self.register_buffer("codes", q, persistent=False)  # (G, out, group) int8
        self.register_buffer("scales", qw.scale.t().contiguous().to(torch.bfloat16), persistent=False)  # (G, out)
        offset = qw.scale.float() * (128.0 - qw.zero.float())  # (out, G); zero when symmetric
        self.register_buffer("offset", None if bool((qw.zero == 128).all()) else offset.t().contiguous().to(torch.bfloat16),
                             persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype), persistent=False)
        self.quantized = qw if keep_codes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        groups = self.codes.shape[0]
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if groups * self.group > self.in_features:
            x2 = F.pad(x2, (0, groups * self.group - self.in_features))
        xg = x2.reshape(x2.shape[0], groups, self.group)
        xw = F.pad(xg, (0, self.width - self.group)) if self.width > self.group else xg
        y = None
        for g in range(groups):
            part = torch.ops.aten._weight_int8pack_mm(xw[:, g].contiguous(), self.codes[g], self.scales[g]).float()
            y = part if y is None else y + part  # groups summed in float32
        if self.offset is not None:
            y = y + xg.sum(-1).float() @ self.offset.float()
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    @property
    def weight(self) -> torch.Tensor:
        """The (out, in) weight the kernel multiplies by (bfloat16), for code that reads ``.weight``; computed."""
        w = self.codes[..., : self.group].float() * self.scales.float().unsqueeze(-1)  # (G, out, group)
        if self.offset is not None:
            w = w + self.offset.float().unsqueeze(-1)
        return w.transpose(0, 1).reshape(self.out_features, -1)[:, : self.in_features].to(torch.bfloat16)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits=8, group_size="
                f"{self.group_size}, sym={self.sym}, bias={self.bias is not None}")
