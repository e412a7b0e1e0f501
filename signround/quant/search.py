"""Optimised RTN: importance-weighted searches for each group's scale (sym) or range (asym).

Both searches minimise ``sum(w * (x - x_hat)^2)`` per group, where ``w`` is an importance weight
per element (from the importance matrix of the calibration activations, or 1). As llama.cpp's
``make_qx_quants``/``make_qkx2_quants`` do, each candidate scale only proposes *codes*; the scale
(and for asym the offset) that best fits those codes is then solved in closed form by weighted
least squares, and the candidate whose fit leaves the least error wins. The winner is re-rounded
with its fitted scale and kept only if that does not increase the error. The asym search ends with
integer zero points, exactly what GPTQ-style formats store.

Cost: each candidate is one rounding pass plus a few fused reductions over the weight.
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


def _sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=1, keepdim=True)


def _err(wg: torch.Tensor, w: torch.Tensor, s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return _sum(w * (wg - s * q) ** 2)


def search_sym(wg: torch.Tensor, bits: int, w: torch.Tensor, n_grid: int = 24, span: float = 0.3) -> IntGroupQuant:
    """Full-range symmetric search: candidate scales shrink or stretch the min/max scale by up to ``span``."""
    m = 2 ** (bits - 1)
    base = minmax_init(wg, bits, sym=True).s0  # (n, 1) signed, maps the extreme to -m
    base = torch.where(base.abs() < SCALE_EPS, torch.full_like(base, SCALE_EPS), base)
    wx = w * wg
    best_score = torch.full_like(base, -1.0)
    best_s = base.clone()
    for k in range(n_grid + 1):
        c = 1.0 - span + 1.5 * span * k / n_grid  # from 1 - span (clip more) to 1 + span/2
        q = (wg / (base * c)).round_().clamp_(-m, m - 1)
        sxq = _sum(wx * q)
        sqq = _sum(w * q * q)
        # Error at the least-squares scale is sum(w x^2) - sxq^2 / sqq: maximise sxq^2 / sqq.
        score = torch.where(sqq > 0, sxq * sxq / sqq.clamp(min=1e-30), torch.zeros_like(sqq))
        s_ls = torch.where(sqq > 0, sxq / sqq.clamp(min=1e-30), base)
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_s = torch.where(better & (s_ls.abs() >= SCALE_EPS), s_ls, best_s)
    # The fitted scale re-rounds the codes; keep it only where that does not hurt.
    q_fit = (wg / best_s).round().clamp(-m, m - 1)
    q_base = (wg / base).round().clamp(-m, m - 1)
    keep = _err(wg, w, best_s, q_fit) <= _err(wg, w, base, q_base)
    return IntGroupQuant(bits=bits, sym=True, s0=torch.where(keep, best_s, base))


def search_asym(wg: torch.Tensor, bits: int, w: torch.Tensor, n_grid: int = 20) -> IntGroupQuant:
    """Asymmetric search: candidate scales around (max - min) / maxq, least-squares (scale, offset) per candidate."""
    maxq = 2**bits - 1
    init = minmax_init(wg, bits, sym=False)
    lo0, hi0 = init.lo0, init.hi0
    width = (hi0 - lo0).clamp(min=SCALE_EPS * maxq)
    sw, sx = _sum(w), _sum(w * wg)
    wx = w * wg
    best_err = torch.full_like(lo0, float("inf"))
    best_a = width / maxq
    best_b = lo0.clone()
    for k in range(n_grid + 1):
        s = width / (maxq - 1.0 + 2.0 * k / n_grid)
        z = (-lo0 / s).round()
        q = (wg / s).round_().add_(z).clamp_(0, maxq)
        # Weighted least squares for x ~ a * q + b.
        wq = w * q
        sq, sqq, sxq = _sum(wq), _sum(wq * q), _sum(wx * q)
        det = sw * sqq - sq * sq
        ok = det > 1e-30
        a = torch.where(ok, (sw * sxq - sq * sx) / det.clamp(min=1e-30), s)
        b = torch.where(ok, (sqq * sx - sq * sxq) / det.clamp(min=1e-30), -z * s)
        err = _sum(w * (wg - a * q - b) ** 2)
        better = (err < best_err) & (a > SCALE_EPS)
        best_err = torch.where(better, err, best_err)
        best_a = torch.where(better, a, best_a)
        best_b = torch.where(better, b, best_b)
    # Snap the offset to an integer zero point, re-round, and refit the scale for those codes.
    z = (-best_b / best_a).round().clamp(0, maxq)
    q = (wg / best_a).round().add(z).clamp(0, maxq) - z
    den = _sum(w * q * q)
    a = torch.where(den > 0, _sum(wx * q) / den.clamp(min=1e-30), best_a)
    a = torch.where(a > SCALE_EPS, a, best_a)
    q2 = (wg / a).round().add(z).clamp(0, maxq) - z
    # Keep whichever of (fitted, min/max) is better per group.
    base_s = width / maxq
    base_z = (-lo0 / base_s).round().clamp(0, maxq)
    base_q = (wg / base_s).round().add(base_z).clamp(0, maxq) - base_z
    keep = _err(wg, w, a, q2) <= _err(wg, w, base_s, base_q)
    s_final = torch.where(keep, a, base_s)
    z_final = torch.where(keep, z, base_z)
    lo = -z_final * s_final
    return IntGroupQuant(bits=bits, sym=False, lo0=lo, hi0=lo + maxq * s_final)


SEARCH_CHUNK = 1 << 21  # elements searched at once: each search holds ~8 temporaries of this size


def search_int(wg: torch.Tensor, bits: int, sym: bool, imatrix_groups: torch.Tensor | None = None,
               imatrix_row: torch.Tensor | None = None) -> IntGroupQuant:
    """The search for every group, a slice of groups at a time (groups are independent, so the result is the
    same as one pass; the temporaries stay ~64 MB instead of ~8x the weight: 1.6 GB for an 8B MLP matrix).

    The importance of each weight is ``imatrix_groups`` (one row per group, like ``wg``) or ``imatrix_row``,
    the groups of one output row, (groups per row, gs), the same for every row: an importance matrix is
    per input column, so it is tiled slice by slice here instead of as a full-size copy of the weight."""
    if imatrix_groups is not None and imatrix_row is not None:
        raise ValueError("give imatrix_groups or imatrix_row, not both")
    if imatrix_row is not None and wg.shape[0] % imatrix_row.shape[0]:
        raise ValueError(f"{wg.shape[0]} groups are not whole rows of {imatrix_row.shape[0]} groups")
    rows = max(1, SEARCH_CHUNK // max(1, wg.shape[1]))
    parts = []
    for i in range(0, wg.shape[0], rows):
        g = wg[i:i + rows]
        if imatrix_row is not None:
            per_row = imatrix_row.shape[0]
            imat = imatrix_row[torch.arange(i, i + g.shape[0], device=imatrix_row.device) % per_row]
        else:
            imat = None if imatrix_groups is None else imatrix_groups[i:i + rows]
        w = importance_weights(g, imat)
        parts.append(search_sym(g, bits, w) if sym else search_asym(g, bits, w))
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    if sym:
        return IntGroupQuant(bits=bits, sym=True, s0=cat("s0"))
    return IntGroupQuant(bits=bits, sym=False, lo0=cat("lo0"), hi0=cat("hi0"))
