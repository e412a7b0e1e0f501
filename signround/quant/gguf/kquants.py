"""The k-quant super-block types: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (256 elements per block, ggml ``ggml-quants.c``).

Each block holds G sub-blocks (groups) of 16 or 32 elements. A group's scale (and min) is itself
quantized against the block's float16 super-scale ``d`` (and ``dmin``): the double quantization.

Searches, per ``SearchMode``:

- ``REF`` (ggml without an importance matrix, ``quantize_row_*_ref``): per group
  q2_k ``make_qkx2_quants`` (weights |x|, grid -0.5 + 0.1 k, 16 steps, absolute error);
  q3_k ``make_q3_quants`` (coordinate re-rounding); q4_k/q5_k ``make_qkx2_quants`` (weights
  ``rms(group) + |x|``, grid -1 + 0.1 k / -0.5 + 0.1 k, 21 / 16 steps); q6_k ``make_qx_quants``
  (weights x^2). The sub-scales are then rounded against ``max / qs_max`` (plain double quant).
- ``IMATRIX`` (``quantize_row_*_impl``): importance ``qw * sqrt(sigma2 + x^2)`` (q6_k: ``qw``) with
  ``make_qkx3_quants`` (grid -0.9 + 0.05 k, 37 steps) or ``make_qx_quants``, and the sub-scales
  quantized by ``make_qp_quants`` (q2/q4/q5) or ``make_qx_quants`` (q3) weighted by each group's
  total importance.
- ``RTN``: min/max (or absmax) group scales, plain double quant, no search.

Every mode ends with ggml's final pass: codes re-rounded with the stored (float16 x integer)
group scales, ``BlockFormat.round_codes``; groups whose scale is 0 keep the search's codes.
The packers are in ``kquant_pack.py``.
"""

from __future__ import annotations

import logging

import torch

from .bits import to_fp16_value
from .formats import BlockFormat, BlockParams, SearchMode
from .kquant_pack import KQUANT_LAYOUTS, pack_kquant, unpack_kquant
from .searches import (
    GROUP_MAX_EPS,
    absmax_quants,
    div_scalar_by,
    make_q3_quants,
    make_qkx_quants,
    make_qp_quants,
    make_qx_quants,
    minmax_quants,
    seq_sum,
    sqrt_f32,
)
from .types import GGMLType, TypeFacts

__all__ = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]

logger = logging.getLogger(__name__)

QK_K = 256


def _block_importance(w: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
    """(rows, cols) -> (n_blocks, 256) per-element importance ``qw`` (1 without an imatrix)."""
    rows, cols = w.shape
    if imatrix is None:
        return torch.ones(rows * cols // QK_K, QK_K, device=w.device)
    qw = imatrix.to(w.device).float().reshape(1, cols // QK_K, QK_K)  # (1, blocks per row, 256)
    return qw.expand(rows, -1, -1).reshape(-1, QK_K)


def _sigma2(x: torch.Tensor, factor: float) -> torch.Tensor:
    """(n_blocks, 256) -> (n_blocks, 1): ``factor * sum(x^2) / 256``, summed in ggml's order."""
    return (factor * seq_sum((x * x).t().contiguous()) / float(QK_K))[:, None]


def _group_sums(t: torch.Tensor, group: int) -> torch.Tensor:
    """(n_blocks, 256) -> (n_blocks, G): per-group float32 sums in element order."""
    g = t.reshape(-1, group)  # (n_blocks * G, group)
    return seq_sum(g.t().contiguous()).reshape(t.shape[0], -1)


def _max_double_quant(values: torch.Tensor, qs_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain double quant of non-negative group values (n_blocks, G) to ``[0, qs_max]``.

    ggml: ``l = nearest_int(qs_max / max * v)``, super-scale ``max / qs_max`` (0 when max is 0).
    Negative values (a least-squares fit can produce them) are clamped to 0 here.
    """
    vmax = values.amax(dim=1)
    live = vmax > 0
    vmax = torch.where(live, vmax, 0.0)  # +0.0 like ggml's ``max = 0`` start (never -0.0)
    inv = torch.where(live, div_scalar_by(float(qs_max), torch.where(live, vmax, torch.ones_like(vmax))), 0.0)
    levels = torch.round(inv[:, None] * values).clamp(0, qs_max)
    return to_fp16_value(vmax / float(qs_max)), levels.to(torch.int16)


def _signed_double_quant(
    scales: torch.Tensor, qs_lo: int, qs_hi: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain double quant of signed group scales (n_blocks, G): the scale with the largest magnitude
    maps to ``qs_lo`` (``iscale = qs_lo / max_scale``); levels clamped to ``[qs_lo, qs_hi]``.
    Blocks whose largest |scale| is not above ``eps`` (0 for q3_k, 1e-15 for q6_k) are dead:
    d = 0, levels 0. Returns (d (n_blocks,), levels (n_blocks, G) int16, live (n_blocks,) bool)."""
    amax, idx = scales.abs().max(dim=1)
    smax = scales.gather(1, idx[:, None]).squeeze(1)
    live = amax > eps if eps == 0 else amax >= eps
    iscale = div_scalar_by(float(qs_lo), torch.where(live, smax, torch.ones_like(smax)))
    levels = torch.round(iscale[:, None] * scales).clamp(qs_lo, qs_hi)
    d = to_fp16_value(div_scalar_by(1.0, iscale))
    return torch.where(live, d, 0.0), torch.where(live[:, None], levels, 0.0).to(torch.int16), live


class _KQuant(BlockFormat):
    """Shared driver: group search -> double quant -> ggml's final rounding pass."""

    @classmethod
    def _groups(cls, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, cls.facts.group_size)  # (n_blocks * G, group_size)

    @classmethod
    def _finish(cls, x: torch.Tensor, params: BlockParams, search_codes: torch.Tensor) -> tuple[BlockParams, torch.Tensor]:
        codes = cls.round_codes(x, params, fallback=search_codes.reshape(x.shape))
        return params, codes

    @classmethod
    def pack(cls, params, codes):
        return pack_kquant(cls.facts.qtype, params, codes)

    @classmethod
    def unpack(cls, data):
        return unpack_kquant(cls.facts.qtype, data)


class _AsymKQuant(_KQuant):
    """q2_k / q4_k / q5_k: ``w = d * sc * q - dmin * mn``."""

    qs_max: int  # largest sub-scale / sub-min level (15 or 63)
    ref_grid: tuple[float, float, int]  # (rmin, rdelta, nstep) of make_qkx2_quants
    ref_mad: bool = False

    @classmethod
    def _ref_weights(cls, xg: torch.Tensor) -> torch.Tensor:
        """ggml q4_k/q5_k reference weights ``sqrt(mean(x^2)) + |x|`` per group (q2_k overrides)."""
        av_x = sqrt_f32(seq_sum((xg * xg).t().contiguous()) / float(xg.shape[1]))
        return av_x[:, None] + xg.abs()

    @classmethod
    def search(cls, w, imatrix, mode):
        f = cls.facts
        x = w.reshape(-1, QK_K).float()  # (n_blocks, 256)
        xg = cls._groups(x)
        n_blocks = x.shape[0]
        if mode is SearchMode.RTN:
            scales, mins, codes = minmax_quants(xg, f.qmax)
        elif mode is SearchMode.REF:
            rmin, rdelta, nstep = cls.ref_grid
            scales, mins, codes = make_qkx_quants(xg, cls._ref_weights(xg), f.qmax, rmin, rdelta, nstep, cls.ref_mad)
        else:
            sigma2 = _sigma2(x, 1.0 if f.qtype is GGMLType.Q2_K else 2.0)
            weight = _block_importance(w, imatrix) * sqrt_f32(sigma2 + x * x)  # (n_blocks, 256)
            scales, mins, codes = make_qkx_quants(cls._groups(x), cls._groups(weight), f.qmax, -0.9, 0.05, 36)
        scales = scales.reshape(n_blocks, f.n_groups)  # (n_blocks, G)
        mins = mins.reshape(n_blocks, f.n_groups)  # (n_blocks, G)
        if mode is SearchMode.IMATRIX:
            sw = _group_sums(weight, f.group_size)
            d, ls = make_qp_quants(scales, cls.qs_max, sw)
            dmin, lm = make_qp_quants(mins, cls.qs_max, sw)
            d, dmin = to_fp16_value(d), to_fp16_value(dmin)
            ls, lm = ls.clamp(min=0).to(torch.int16), lm.clamp(min=0).to(torch.int16)
        else:
            d, ls = _max_double_quant(scales, cls.qs_max)
            dmin, lm = _max_double_quant(mins, cls.qs_max)
        params = BlockParams(f.qtype, d, m=dmin, scales=ls, mins=lm)
        return cls._finish(x, params, codes)


class _SymKQuant(_KQuant):
    """q3_k / q6_k: ``w = d * sc * (q - zero)`` with signed sub-scales."""

    qs_lo: int  # sub-scale range [qs_lo, qs_hi]
    qs_hi: int
    dead_eps: float  # a block whose largest |group scale| is not above this gets d = 0

    @classmethod
    def search(cls, w, imatrix, mode):
        f = cls.facts
        x = w.reshape(-1, QK_K).float()  # (n_blocks, 256)
        xg = cls._groups(x)
        n_blocks, nmax = x.shape[0], f.zero
        if mode is SearchMode.RTN:
            scales, codes = absmax_quants(xg, nmax)
        elif mode is SearchMode.REF:
            scales, codes = make_q3_quants(xg, nmax) if f.qtype is GGMLType.Q3_K else make_qx_quants(xg, nmax)
        elif f.qtype is GGMLType.Q6_K:  # ggml q6_k weighs by the raw importance
            scales, codes = make_qx_quants(xg, nmax, cls._groups(_block_importance(w, imatrix)))
        else:
            weight = _block_importance(w, imatrix) * sqrt_f32(_sigma2(x, 2.0) + x * x)
            scales, codes = make_qx_quants(xg, nmax, cls._groups(weight))
        scales = scales.reshape(n_blocks, f.n_groups)  # (n_blocks, G)
        if mode is SearchMode.IMATRIX and f.qtype is GGMLType.Q3_K:
            d, levels = make_qx_quants(scales, -cls.qs_lo, _group_sums(weight, f.group_size))
            params = BlockParams(f.qtype, to_fp16_value(d), scales=(levels + cls.qs_lo).to(torch.int16))
        else:
            d, levels, live = _signed_double_quant(scales, cls.qs_lo, cls.qs_hi, cls.dead_eps)
            if f.qtype is GGMLType.Q3_K:  # ggml leaves the 6-bit fields at 0, which decode as -32
                levels = torch.where(live[:, None], levels, cls.qs_lo).to(torch.int16)
            else:  # ggml zeroes a whole q6_k block whose scales are all ~0
                codes = torch.where(live[:, None], codes.reshape(n_blocks, -1), 0.0)
            params = BlockParams(f.qtype, d, scales=levels)
        return cls._finish(x, params, codes)


class Q2_K(
    _AsymKQuant,
    facts=TypeFacts(GGMLType.Q2_K, block_size=256, type_size=84, group_size=16, qmax=3, zero=None),
    layout=KQUANT_LAYOUTS[GGMLType.Q2_K],
):
    qs_max = 15
    ref_grid = (-0.5, 0.1, 15)
    ref_mad = True

    @classmethod
    def _ref_weights(cls, xg):
        return xg.abs()


class Q3_K(
    _SymKQuant,
    facts=TypeFacts(GGMLType.Q3_K, block_size=256, type_size=110, group_size=16, qmax=7, zero=4),
    layout=KQUANT_LAYOUTS[GGMLType.Q3_K],
):
    qs_lo, qs_hi, dead_eps = -32, 31, 0.0


class Q4_K(
    _AsymKQuant,
    facts=TypeFacts(GGMLType.Q4_K, block_size=256, type_size=144, group_size=32, qmax=15, zero=None),
    layout=KQUANT_LAYOUTS[GGMLType.Q4_K],
):
    qs_max = 63
    ref_grid = (-1.0, 0.1, 20)


class Q5_K(
    _AsymKQuant,
    facts=TypeFacts(GGMLType.Q5_K, block_size=256, type_size=176, group_size=32, qmax=31, zero=None),
    layout=KQUANT_LAYOUTS[GGMLType.Q5_K],
):
    qs_max = 63
    ref_grid = (-0.5, 0.1, 15)


class Q6_K(
    _SymKQuant,
    facts=TypeFacts(GGMLType.Q6_K, block_size=256, type_size=210, group_size=16, qmax=63, zero=32),
    layout=KQUANT_LAYOUTS[GGMLType.Q6_K],
):
    qs_lo, qs_hi, dead_eps = -128, 127, GROUP_MAX_EPS
