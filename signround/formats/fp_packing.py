"""Stored forms of FP/MX codes and scales, shared by every format that writes them (auto_round, compressed-tensors).

- FP4 elements: two 4-bit codes per byte along the input dimension, **element 2k in the low nibble**,
  element 2k+1 in the high nibble (OCP; AutoRound reference §5.1; compressed-tensors' ``weight_packed``).
- E8M0 scales: a power of two ``2**e`` is stored as the byte ``e + 127`` (``e`` in [-127, 127]; 255 is NaN).
- FP8 E4M3 scales (NVFP4): the ``float8_e4m3fn`` value, which the scale already is exactly.
"""

from __future__ import annotations

import math

import torch

__all__ = ["pack_fp4", "unpack_fp4", "e8m0_encode", "e8m0_decode", "fp8_scale_encode", "FP8_MAX", "FP4_MAX",
           "static_input_scale", "static_act_max"]


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


FP8_MAX = 448.0  # largest float8_e4m3fn value
FP4_MAX = 6.0  # largest E2M1 value


def static_input_scale(act_dtype: str, amax: torch.Tensor) -> torch.Tensor:
    """The stored form of a calibrated max |input|, the same in every format: FP8 ``input_scale = amax / 448``,
    NVFP4 ``input_global_scale = 448 * 6 / amax``."""
    return amax / FP8_MAX if act_dtype == "fp" else FP8_MAX * FP4_MAX / amax


def static_act_max(act_dtype: str, stored: torch.Tensor) -> torch.Tensor:
    """The 0-d float32 max |input| whose stored form (``static_input_scale``) is exactly ``stored``.

    Inverting in float32 can land one ulp off the max the writer had, and the activation quantizer would then
    recompute a scale one ulp off the file's: the float32 neighbours of the estimate are searched for the one
    that reproduces the stored value exactly (a value written by another tool may have none: the estimate).
    """
    target = stored.detach().float().reshape(())
    guess = target * FP8_MAX if act_dtype == "fp" else FP8_MAX * FP4_MAX / target
    below = above = guess
    for _ in range(4):
        for cand in (below, above):
            if torch.equal(static_input_scale(act_dtype, cand), target):
                return cand
        below = torch.nextafter(below, torch.tensor(-math.inf))
        above = torch.nextafter(above, torch.tensor(math.inf))
    return guess
