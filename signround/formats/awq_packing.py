"""AWQ GEMM's word layout: eight 4-bit codes per int32, packed along the output dimension, interleaved.

Shared by the ``auto_awq`` writer and the checkpoint reader (``inference/layouts.py``). Inside a
word, 4-bit nibble ``k`` (bits ``4k .. 4k+3``) holds output column ``AWQ_ORDER[k]`` of its group of
8 columns::

    bits:    31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
    column:    7      5      3      1      6      4      2      0
"""

from __future__ import annotations

import torch

__all__ = ["AWQ_ORDER", "pack_awq", "unpack_awq"]

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble k of a word holds column AWQ_ORDER[k] of its group of 8


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """(rows, N) 4-bit codes -> (rows, N / 8) int32 in AWQ's interleaved nibble order."""
    rows, n = values.shape
    if n % 8:
        raise ValueError(f"AWQ packs 8 columns per word: width {n} is not a multiple of 8")
    if values.numel() and int(values.max()) > 15:
        raise ValueError(f"AWQ holds 4-bit codes, got a value {int(values.max())}")
    cols = values.to(torch.int64).reshape(rows, n // 8, 8)  # (rows, N/8, 8)
    words = torch.zeros(rows, n // 8, dtype=torch.int64)
    for k, col in enumerate(AWQ_ORDER):
        words |= cols[:, :, col] << (4 * k)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # (rows, N/8)


def unpack_awq(words: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_awq``: (rows, N / 8) int32 -> (rows, N) uint8."""
    rows, n_words = words.shape
    w = words.to(torch.int64) & 0xFFFFFFFF
    cols = torch.empty(rows, n_words, 8, dtype=torch.int64)  # (rows, N/8, 8)
    for k, col in enumerate(AWQ_ORDER):
        cols[:, :, col] = (w >> (4 * k)) & 0xF
    return cols.reshape(rows, n_words * 8).to(torch.uint8)


# The diagram above, checked against the packer: columns 0..7 holding the values 0..7.
assert int(pack_awq(torch.arange(8).reshape(1, 8))[0, 0]) == 0x75316420
