"""Float pass-through ggml types: F32, F16, BF16 (one element per "block", little-endian).

Conversions round to nearest even, as ggml's ``GGML_FP32_TO_FP16`` / ``ggml_compute_fp32_to_bf16``.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch

from .formats import GGMLFormat
from .types import GGMLType, TypeFacts

__all__ = ["FloatFormat", "F32", "F16", "BF16"]

logger = logging.getLogger(__name__)


class FloatFormat(GGMLFormat):
    dtype: ClassVar[torch.dtype]

    @classmethod
    def encode(cls, w: torch.Tensor) -> torch.Tensor:
        """(rows, cols) float -> (rows, cols * type_size) uint8."""
        rows = w.shape[0]
        return w.detach().float().to(cls.dtype).contiguous().view(torch.uint8).reshape(rows, -1)

    @classmethod
    def decode(cls, data: torch.Tensor) -> torch.Tensor:
        """(rows, cols * type_size) uint8 -> (rows, cols) float32."""
        return data.contiguous().view(cls.dtype).float()


class F32(FloatFormat, facts=TypeFacts(GGMLType.F32, 1, 4, 1, 0, None, is_float=True), layout=(("value", 4),)):
    dtype = torch.float32


class F16(FloatFormat, facts=TypeFacts(GGMLType.F16, 1, 2, 1, 0, None, is_float=True), layout=(("value", 2),)):
    dtype = torch.float16


class BF16(FloatFormat, facts=TypeFacts(GGMLType.BF16, 1, 2, 1, 0, None, is_float=True), layout=(("value", 2),)):
    dtype = torch.bfloat16
