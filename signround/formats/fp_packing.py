"""Stored forms of FP/MX codes and scales, shared by every format that writes them (auto_round, compressed-tensors).

- FP4 elements: two 4-bit codes per byte along the input dimension, **element 2k in the low nibble**,
  element 2k+1 in the high nibble (OCP; AutoRound reference §5.1; compressed-tensors' ``weight_packed``).
- E8M0 scales: a power of two ``2**e`` is stored as the byte ``e + 127`` (``e`` in [-127, 127]; 255 is NaN).
- FP8 E4M3 scales (NVFP4): the ``float8_e4m3fn`` value, which the scale already is exactly.
"""

from __future__ import annotations

import torch

__all__ = ["pack_fp4", "unpack_fp4", "e8m0_encode", "e8m0_decode", "fp8_scale_encode"]


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """(out, in) uint8 codes < 16 -> (out, in / 2) uint8, element 2k in the low nibble."""
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise TypeError(f"FP4 codes must be a 2-D uint8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    if codes.shape[1] % 2:
        raise ValueError(f"cannot pack {codes.shape[1]} FP4 codes per row: in_features must be even")
    return (codes[:, 0::2] & 15) | ((codes[:, 1::2] & 15) << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """(out, in / 2) uint8 -> (out, in) uint8 codes."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"packed FP4 must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    return torch.stack((packed & 15, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


def e8m0_encode(scale: torch.Tensor) -> torch.Tensor:
    """Powers of two (float32) -> E8M0 bytes; anything that is not an exact power of two in range is an error."""
    mant, exp = torch.frexp(scale.float())  # scale = mant * 2**exp, mant in [0.5, 1)
    e = exp.to(torch.int32) - 1
    if not bool(((mant == 0.5) & (e >= -127) & (e <= 127)).all()):
        raise ValueError("E8M0 scales must be powers of two in [2**-127, 2**127]")
    return (e + 127).to(torch.uint8)


def e8m0_decode(stored: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes -> float32 powers of two (the NaN code 255 is rejected)."""
    if stored.dtype != torch.uint8:
        raise TypeError(f"E8M0 scales must be uint8, got {stored.dtype}")
    if bool((stored == 255).any()):
        raise ValueError("E8M0 scale byte 255 is NaN")
    return torch.exp2(stored.float() - 127)


def fp8_scale_encode(scale: torch.Tensor) -> torch.Tensor:
    """float32 scales that are FP8 E4M3 values -> ``float8_e4m3fn``; a value that would round is an error."""
    stored = scale.float().to(torch.float8_e4m3fn)
    if not torch.equal(stored.float(), scale.float()):
        raise ValueError("FP8 scales must be exactly representable in E4M3")
    return stored
