"""The one-scale ggml block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (blocks of 32, ggml ``ggml-quants.c``).

Searches, per ``SearchMode``:

- ``RTN`` and ``REF``: ggml's reference quantizers (``quantize_row_q4_0_ref`` ...), which already
  are plain absmax / min-max rounding: ``d = max / -8`` (q4_0), ``d = (max - min) / 15`` (q4_1), ...
  The codes are rounded with the float32 inverse of the *unrounded* scale, as ggml does, and the
  stored scale is its float16 rounding. Bit-identical to ggml and to ``gguf.quants.quantize``.
- ``IMATRIX``: ggml's ``quantize_row_q*_impl``: importance ``qw * sqrt(sigma2 + x^2)`` with
  ``sigma2`` the row's mean square, ``make_qx_quants`` (q4_0/q5_0) or ``make_qkx3_quants``
  (q4_1/q5_1, grid -0.9 + 0.05 k, 37 steps). q8_0 ignores the importance (as ggml does).

Block layouts (bytes, in order; ``q[j]`` is the unsigned code of element j of the block)::

    Q4_0  [d f16 : 2][qs : 16]                  qs[j] = q[j] | q[j + 16] << 4
    Q4_1  [d f16 : 2][m f16 : 2][qs : 16]       same qs
    Q5_0  [d f16 : 2][qh : 4][qs : 16]          qh = uint32 LE, bit j = q[j] >> 4; qs of the low nibbles
    Q5_1  [d f16 : 2][m f16 : 2][qh : 4][qs : 16]
    Q8_0  [d f16 : 2][qs int8 : 32]             qs[j] = q[j] - 128
"""

from __future__ import annotations

import logging

import torch

from .bits import fp16_from_bytes, fp16_to_bytes, pack_bits, to_fp16_value, unpack_bits
from .formats import BlockFormat, BlockParams, Rounding, SearchMode
from .searches import div_scalar_by, make_qkx_quants, make_qx_quants, seq_sum, sqrt_f32
from .types import GGMLType, TypeFacts

__all__ = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]

logger = logging.getLogger(__name__)

QK = 32


def _row_importance(w: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
    """(rows, cols) -> (n_blocks, 32): ggml's ``qw[j] * sqrtf(sigma2 + x[j]^2)``, sigma2 per row."""
    rows, cols = w.shape
    sigma2 = seq_sum((w * w).t().contiguous()) / float(cols)  # (rows,)
    qw = torch.ones(cols, device=w.device) if imatrix is None else imatrix.to(w.device).float()
    weight = qw[None, :] * sqrt_f32(sigma2[:, None] + w * w)  # (rows, cols)
    return weight.reshape(-1, QK)  # (n_blocks, 32)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """ggml's ``id = d ? 1.0f / d : 0.0f``."""
    nz = d != 0
    return torch.where(nz, div_scalar_by(1.0, torch.where(nz, d, torch.ones_like(d))), 0.0)


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """(n, 32) codes -> (n, 16) bytes: element j in the low nibble, element j + 16 in the high one."""
    q = q.to(torch.uint8)
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _from_nibbles(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)  # (n, 32)


class _SymLegacy(BlockFormat):
    """q4_0 / q5_0: ``w = d * (q - zero)``, ``d`` maps the signed absmax to ``-zero``."""

    rounding = Rounding.HALF_UP

    @classmethod
    def search(cls, w, imatrix, mode):
        x = w.reshape(-1, QK).float()  # (n_blocks, 32)
        zero = cls.facts.zero
        if mode is SearchMode.IMATRIX:
            scale, codes = make_qx_quants(x, zero, _row_importance(w.float(), imatrix))
            return BlockParams(cls.facts.qtype, to_fp16_value(scale)), codes.to(torch.uint8)
        idx = x.abs().argmax(dim=1, keepdim=True)
        mx = x.gather(1, idx).squeeze(1)
        d = mx / float(-zero)
        t = x * _inverse(d)[:, None]
        codes = torch.floor(t + (zero + 0.5)).clamp(0, cls.facts.qmax)  # (int8_t)(t + zero + 0.5), then MIN
        return BlockParams(cls.facts.qtype, to_fp16_value(d)), codes.to(torch.uint8)


class _AsymLegacy(BlockFormat):
    """q4_1 / q5_1: ``w = d * q + m`` with ``m`` the block min."""

    rounding = Rounding.HALF_UP

    @classmethod
    def search(cls, w, imatrix, mode):
        x = w.reshape(-1, QK).float()  # (n_blocks, 32)
        qmax = cls.facts.qmax
        if mode is SearchMode.IMATRIX:
            scale, the_min, codes = make_qkx_quants(x, _row_importance(w.float(), imatrix), qmax, -0.9, 0.05, 36)
            params = BlockParams(cls.facts.qtype, to_fp16_value(scale), m=to_fp16_value(-the_min))
            return params, codes.to(torch.uint8)
        lo = x.amin(dim=1)
        d = (x.amax(dim=1) - lo) / float(qmax)
        t = (x - lo[:, None]) * _inverse(d)[:, None]
        codes = torch.floor(t + 0.5).clamp(0, qmax)
        return BlockParams(cls.facts.qtype, to_fp16_value(d), m=to_fp16_value(lo)), codes.to(torch.uint8)


class Q4_0(
    _SymLegacy,
    facts=TypeFacts(GGMLType.Q4_0, block_size=32, type_size=18, group_size=32, qmax=15, zero=8),
    layout=(("d", 2), ("qs", 16)),
):
    @classmethod
    def pack(cls, params, codes):
        return torch.cat([fp16_to_bytes(params.d), _nibbles(codes)], dim=1)

    @classmethod
    def unpack(cls, data):
        return BlockParams(cls.facts.qtype, fp16_from_bytes(data[:, :2])), _from_nibbles(data[:, 2:])


class Q4_1(
    _AsymLegacy,
    facts=TypeFacts(GGMLType.Q4_1, block_size=32, type_size=20, group_size=32, qmax=15, zero=None),
    layout=(("d", 2), ("m", 2), ("qs", 16)),
):
    @classmethod
    def pack(cls, params, codes):
        return torch.cat([fp16_to_bytes(params.d), fp16_to_bytes(params.m), _nibbles(codes)], dim=1)

    @classmethod
    def unpack(cls, data):
        params = BlockParams(cls.facts.qtype, fp16_from_bytes(data[:, :2]), m=fp16_from_bytes(data[:, 2:4]))
        return params, _from_nibbles(data[:, 4:])


class Q5_0(
    _SymLegacy,
    facts=TypeFacts(GGMLType.Q5_0, block_size=32, type_size=22, group_size=32, qmax=31, zero=16),
    layout=(("d", 2), ("qh", 4), ("qs", 16)),
):
    @classmethod
    def pack(cls, params, codes):
        return torch.cat([fp16_to_bytes(params.d), pack_bits(codes >> 4), _nibbles(codes)], dim=1)

    @classmethod
    def unpack(cls, data):
        codes = _from_nibbles(data[:, 6:]) | (unpack_bits(data[:, 2:6]) << 4)
        return BlockParams(cls.facts.qtype, fp16_from_bytes(data[:, :2])), codes


class Q5_1(
    _AsymLegacy,
    facts=TypeFacts(GGMLType.Q5_1, block_size=32, type_size=24, group_size=32, qmax=31, zero=None),
    layout=(("d", 2), ("m", 2), ("qh", 4), ("qs", 16)),
):
    @classmethod
    def pack(cls, params, codes):
        parts = [fp16_to_bytes(params.d), fp16_to_bytes(params.m), pack_bits(codes >> 4), _nibbles(codes)]
        return torch.cat(parts, dim=1)

    @classmethod
    def unpack(cls, data):
        codes = _from_nibbles(data[:, 8:]) | (unpack_bits(data[:, 4:8]) << 4)
        params = BlockParams(cls.facts.qtype, fp16_from_bytes(data[:, :2]), m=fp16_from_bytes(data[:, 2:4]))
        return params, codes


class Q8_0(
    BlockFormat,
    facts=TypeFacts(GGMLType.Q8_0, block_size=32, type_size=34, group_size=32, qmax=255, zero=128),
    layout=(("d", 2), ("qs", 32)),
):
    rounding = Rounding.HALF_AWAY

    @classmethod
    def search(cls, w, imatrix, mode):
        x = w.reshape(-1, QK).float()  # (n_blocks, 32)
        d = x.abs().amax(dim=1) / 127.0
        t = x * _inverse(d)[:, None]
        a = t.abs()
        f = torch.floor(a)
        q = torch.sign(t) * (f + torch.floor(2 * (a - f)))  # roundf
        return BlockParams(cls.facts.qtype, to_fp16_value(d)), (q + 128).to(torch.uint8)

    @classmethod
    def pack(cls, params, codes):
        qs = (codes.to(torch.int16) - 128).to(torch.int8).view(torch.uint8)
        return torch.cat([fp16_to_bytes(params.d), qs], dim=1)

    @classmethod
    def unpack(cls, data):
        qs = data[:, 2:].contiguous().view(torch.int8).to(torch.int16) + 128
        return BlockParams(cls.facts.qtype, fp16_from_bytes(data[:, :2])), qs.to(torch.uint8)
