"""Optimised RTN: importance-weighted searches for each group's scale (sym) or range (asym).

Both searches minimise ``sum(w * (x - x_hat)^2)`` per group, where ``w`` is an importance
weight per element (from the importance matrix of the calibration activations, or 1). They try a
grid of candidate scales, re-fit each candidate by weighted least squares given its codes (as
llama.cpp's ``make_qx_quants``/``make_qkx2_quants`` do), and keep the best per group.
The asym search keeps integer zero points, so the result is exactly what GPTQ-style formats store.

Shapes: ``wg`` and ``w`` are (n_groups_total, group_size); results are (n_groups_total, 1).
"""

from __future__ import annotations

import torch

from .int import SCALE_EPS, IntGroupQuant, minmax_init

__all__ = ["search_sym", "search_asym", "search_int", "importance_weights"]


def importance_weights(wg: torch.Tensor, imatrix_groups: torch.Tensor | None) -> torch.Tensor:
    """Per-element weights for the search: the importance of each input column, patched where it is zero.

    ``imatrix_groups`` is the per-column mean of squared activations laid out like ``wg``.
    Without one, every element weighs the same.
    """
    if imatrix_groups is None:
        return torch.ones_like(wg)
    w = imatrix_groups.clamp(min=0)
    mean = w.mean(dim=1, keepdim=True)
    # Columns never activated still matter a little; an all-zero group falls back to plain MSE.
    w = w + 1e-3 * mean
    return torch.where(mean > 0, w, torch.ones_like(w))


def _weighted_err(wg: torch.Tensor, w: torch.Tensor, s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (w * (wg - s * q) ** 2).sum(dim=1, keepdim=True)


def search_sym(wg: torch.Tensor, bits: int, w: torch.Tensor, n_grid: int = 40, span: float = 0.35) -> IntGroupQuant:
    """Full-range symmetric scale search. Candidates put the largest-magnitude value at ``-m * c``."""
    m = 2 ** (bits - 1)
    base = minmax_init(wg, bits, sym=True).s0  # (n, 1) signed, maps the extreme to -m
    best_s = base.clone()
    safe = torch.where(base.abs() < SCALE_EPS, torch.full_like(base, SCALE_EPS), base)
    best_err = _weighted_err(wg, w, safe, (wg / safe).round().clamp(-m, m - 1))
    for k in range(n_grid + 1):
        c = 1.0 - span + (2 * span - 0.5 * span) * k / n_grid  # shrink factors from 1-span to 1+span/2
        s = safe * c
        q = (wg / s).round().clamp(-m, m - 1)
        err = _weighted_err(wg, w, s, q)
        # Least-squares refit of the scale for these codes, then re-round.
        den = (w * q * q).sum(dim=1, keepdim=True)
        s_ls = torch.where(den > 0, (w * wg * q).sum(dim=1, keepdim=True) / den.clamp(min=1e-30), s)
        s_ls = torch.where(s_ls.abs() < SCALE_EPS, s, s_ls)
        q_ls = (wg / s_ls).round().clamp(-m, m - 1)
        err_ls = _weighted_err(wg, w, s_ls, q_ls)
        for cand_s, cand_err in ((s, err), (s_ls, err_ls)):
            better = cand_err < best_err
            best_err = torch.where(better, cand_err, best_err)
            best_s = torch.where(better, cand_s, best_s)
    return IntGroupQuant(bits=bits, sym=True, s0=best_s)


def search_asym(wg: torch.Tensor, bits: int, w: torch.Tensor, n_grid: int = 20) -> IntGroupQuant:
    """Asymmetric search over scales with integer zero points, each candidate re-fitted by least squares."""
    maxq = 2**bits - 1
    init = minmax_init(wg, bits, sym=False)
    lo0, hi0 = init.lo0, init.hi0
    width = (hi0 - lo0).clamp(min=SCALE_EPS * maxq)
    best_s = width / maxq
    best_z = (-lo0 / best_s).round().clamp(0, maxq)
    best_err = _weighted_err(wg, w, best_s, (wg / best_s).round().add(best_z).clamp(0, maxq) - best_z)
    for k in range(n_grid + 1):
        iscale = (maxq - 1.0 + 2.0 * k / n_grid) / width  # divisors around maxq
        s = 1.0 / iscale
        z = (-lo0 / s).round().clamp(0, maxq)
        q = (wg / s).round().add(z).clamp(0, maxq)
        # Weighted least squares for x ~ a * q + b (closed form), then snap b to an integer zero point.
        sw = w.sum(dim=1, keepdim=True)
        sq = (w * q).sum(dim=1, keepdim=True)
        sqq = (w * q * q).sum(dim=1, keepdim=True)
        sx = (w * wg).sum(dim=1, keepdim=True)
        sxq = (w * wg * q).sum(dim=1, keepdim=True)
        det = sw * sqq - sq * sq
        a = torch.where(det > 0, (sw * sxq - sq * sx) / det.clamp(min=1e-30), s)
        b = torch.where(det > 0, (sqq * sx - sq * sxq) / det.clamp(min=1e-30), -z * s)
        a = torch.where(a > SCALE_EPS, a, s)
        z2 = (-b / a).round().clamp(0, maxq)
        q2 = (wg / a).round().add(z2).clamp(0, maxq) - z2
        den = (w * q2 * q2).sum(dim=1, keepdim=True)
        a2 = torch.where(den > 0, (w * wg * q2).sum(dim=1, keepdim=True) / den.clamp(min=1e-30), a)
        a2 = torch.where(a2 > SCALE_EPS, a2, a)
        q3 = (wg / a2).round().add(z2).clamp(0, maxq) - z2
        for cand_s, cand_z, cand_q in ((s, z, q - z), (a2, z2, q3)):
            err = _weighted_err(wg, w, cand_s, cand_q)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, cand_s, best_s)
            best_z = torch.where(better, cand_z, best_z)
    lo = -best_z * best_s
    return IntGroupQuant(bits=bits, sym=False, lo0=lo, hi0=lo + maxq * best_s)


def search_int(wg: torch.Tensor, bits: int, sym: bool, imatrix_groups: torch.Tensor | None = None) -> IntGroupQuant:
    w = importance_weights(wg, imatrix_groups)
    return search_sym(wg, bits, w) if sym else search_asym(wg, bits, w)
