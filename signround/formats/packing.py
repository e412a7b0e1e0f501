"""Bit packing of integer codes into int32 words, GPTQ style.

Layout: along the packed dimension the codes form one little-endian bit stream, code ``k`` at bit
offset ``k * bits``, cut into 32-bit words. For 2/4/8 bits this is "32/bits codes per word, code j at
bit j*bits"; for 3 bits it is GPTQ's cross-word scheme (32 codes in 3 words, code 10 straddling
words 0-1 and code 21 words 1-2)::

    word 0: c0 c1 ... c9 (3 bits each, from bit 0) | low 2 bits of c10 at bits 30-31
    word 1: high bit of c10 at bit 0 | c11 ... c20 from bit 1 | low bit of c21 at bit 31
    word 2: high 2 bits of c21 at bits 0-1 | c22 ... c31 from bit 2

Byte formula: packed length = length * bits / 32 words (length a multiple of 32 / gcd(32, bits)).
"""

from __future__ import annotations

import torch

__all__ = ["pack_bits", "unpack_bits"]


def _check(length: int, bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if length % 32:
        raise ValueError(f"cannot pack {length} codes: the packed dimension must be a multiple of 32")


def pack_bits(codes: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """Pack unsigned codes (< 2**bits) along ``dim`` of a 2-D tensor into int32 words."""
    if codes.dim() != 2:
        raise ValueError(f"pack_bits takes a 2-D tensor, got shape {tuple(codes.shape)}")
    if dim == 1:
        return pack_bits(codes.t(), bits, 0).t().contiguous()
    length, width = codes.shape
    _check(length, bits)
    c = codes.to(torch.int64).reshape(length // 32, 32, width)  # (n_runs, 32, width): 32 codes -> `bits` words
    if int(c.min()) < 0 or int(c.max()) >= 2**bits:
        raise ValueError(f"codes out of range for {bits} bits: [{int(c.min())}, {int(c.max())}]")
    words = torch.zeros(length // 32, bits, width, dtype=torch.int64)  # (n_runs, bits, width)
    for k in range(32):
        word, off = divmod(k * bits, 32)
        words[:, word] |= (c[:, k] << off) & 0xFFFFFFFF
        if off + bits > 32:  # the code straddles two words
            words[:, word + 1] |= c[:, k] >> (32 - off)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.reshape(length * bits // 32, width).to(torch.int32)


def unpack_bits(words: torch.Tensor, bits: int, dim: int = 0, length: int | None = None) -> torch.Tensor:
    """Inverse of ``pack_bits``: int32 words -> uint8 codes along ``dim`` (optionally cut to ``length``)."""
    if words.dim() != 2:
        raise ValueError(f"unpack_bits takes a 2-D tensor, got shape {tuple(words.shape)}")
    if dim == 1:
        return unpack_bits(words.t(), bits, 0, length).t().contiguous()
    n_words, width = words.shape
    if n_words % bits:
        raise ValueError(f"{n_words} packed words is not a whole number of {bits}-bit runs of 32 codes")
    w = (words.to(torch.int64) & 0xFFFFFFFF).reshape(n_words // bits, bits, width)  # (n_runs, bits, width)
    mask = 2**bits - 1
    codes = torch.empty(n_words // bits, 32, width, dtype=torch.int64)  # (n_runs, 32, width)
    for k in range(32):
        word, off = divmod(k * bits, 32)
        val = w[:, word] >> off
        if off + bits > 32:
            val = val | (w[:, word + 1] << (32 - off))
        codes[:, k] = val & mask
    codes = codes.reshape(-1, width)  # (n_runs * 32, width)
    if length is not None:
        if length > codes.shape[0]:
            raise ValueError(f"packed tensor holds {codes.shape[0]} codes, fewer than the {length} expected")
        codes = codes[:length]
    return codes.to(torch.uint8)
