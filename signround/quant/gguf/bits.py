"""Byte-level helpers shared by the ggml block packers (little-endian, like ggml on every host it runs on)."""

from __future__ import annotations

import logging

import torch

__all__ = ["fp16_to_bytes", "fp16_from_bytes", "pack_bits", "unpack_bits", "to_fp16_value"]

logger = logging.getLogger(__name__)


def to_fp16_value(t: torch.Tensor) -> torch.Tensor:
    """float32 -> the float32 value of its float16 rounding (round to nearest even, as GGML_FP32_TO_FP16)."""
    return t.float().to(torch.float16).float()


def fp16_to_bytes(t: torch.Tensor) -> torch.Tensor:
    """(n,) float -> (n, 2) uint8, the little-endian float16 bytes."""
    return t.float().to(torch.float16).contiguous().view(torch.uint8).reshape(-1, 2)


def fp16_from_bytes(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) uint8 -> (n,) float32."""
    return b.contiguous().view(torch.float16).reshape(-1).float()


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(n, 8 k) of 0/1 -> (n, k) uint8; element ``8 j + b`` goes to bit ``b`` of byte ``j``."""
    n = bits.shape[0]
    b = bits.to(torch.uint8).reshape(n, -1, 8)  # (n, k, 8)
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=bits.device)
    return (b * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(data: torch.Tensor) -> torch.Tensor:
    """(n, k) uint8 -> (n, 8 k) uint8 of 0/1, the inverse of ``pack_bits``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=data.device)
    return ((data[..., None] >> shifts) & 1).reshape(data.shape[0], -1)  # (n, k, 8) -> (n, 8 k)
