"""llama.cpp's scale searches, vectorised over groups: ``make_qx_quants``, ``make_q3_quants``,
``make_qkx2_quants``/``make_qkx3_quants`` and ``make_qp_quants`` (ggml ``ggml-quants.c``).

Every function takes groups as rows, ``x`` of shape (G, n) float32, and searches all G groups at
once; the only Python loops run over the candidate grid (at most 37 steps) and over the n <= 32
elements of a group. The element loop is deliberate: llama.cpp accumulates its sums in float32,
left to right, and summing in that same order (``seq_sum``) reproduces its choices bit for bit
instead of "almost always". Other exactness rules followed here:

- ``nearest_int`` (ggml's ``fval + 1.5 * 2**23`` trick) is round-half-to-even, i.e. ``torch.round``;
- scalars are combined in float32 the way C does (``rmin + rdelta * is + nmax``), see ``f32``;
- a Python number divided by a tensor is never written as ``c / t`` (torch computes that as
  ``t.reciprocal() * c``, which rounds differently): ``div_scalar_by`` divides exactly;
- ``torch.sqrt`` on float32 is not correctly rounded on CPU; ``sqrt_f32`` goes through float64.

Internally the kernels work on the transposed (n, G) layout so that element ``i`` of every group is
one contiguous row. Codes come back as (G, n) float tensors of small integers.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

__all__ = [
    "GROUP_MAX_EPS",
    "f32",
    "seq_sum",
    "sqrt_f32",
    "div_scalar_by",
    "make_qx_quants",
    "make_q3_quants",
    "make_qkx_quants",
    "make_qp_quants",
    "absmax_quants",
    "minmax_quants",
]

logger = logging.getLogger(__name__)

GROUP_MAX_EPS = 1e-15  # ggml: a group whose largest |x| is below this is all zero


def f32(value: float) -> float:
    """A Python float holding exactly the float32 value C would compute for ``value``."""
    return float(np.float32(value))


def seq_sum(t: torch.Tensor) -> torch.Tensor:
    """(n, G) -> (G,): float32 sum over dim 0, left to right, like ``for (i...) s += t[i]`` in C."""
    acc = t[0].clone()
    for i in range(1, t.shape[0]):
        acc += t[i]
    return acc


def sqrt_f32(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 square root (C ``sqrtf``)."""
    return torch.sqrt(t.double()).float()


def div_scalar_by(c: float, t: torch.Tensor) -> torch.Tensor:
    """``c / t`` with one correctly rounded float32 division."""
    return torch.full_like(t, c) / t


def _signed_absmax(xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, G) -> (amax, max): the largest |x| and the signed value that has it (first one on ties)."""
    amax, idx = xt.abs().max(dim=0)
    mx = xt.gather(0, idx[None]).squeeze(0)
    return amax, mx


def _pick(better: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(better, new, old)


def absmax_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain symmetric RTN (``make_qx_quants`` with ``rmse_type == 0``): the signed absmax maps to ``-nmax``.

    Returns (scale (G,), codes (G, n) in [0, 2 * nmax - 1]); all-zero groups get scale 0 and codes 0.
    """
    xt = x.t()
    amax, mx = _signed_absmax(xt)
    zero = amax < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    iscale = div_scalar_by(float(-nmax), mx)
    codes = (torch.round(iscale * x.t()).clamp(-nmax, nmax - 1) + nmax).t()
    scale = div_scalar_by(1.0, iscale)
    return torch.where(zero, 0.0, scale), torch.where(zero[:, None], 0.0, codes)


def make_qx_quants(x: torch.Tensor, nmax: int, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric weighted search (``make_qx_quants``, ``rmse_type == 1``).

    Tries ``iscale = -(nmax + 0.1 k) / max`` for k in -9..9, rounds, and keeps the candidate whose
    least-squares scale ``sum(w x l) / sum(w l^2)`` explains most of ``sum(w x^2)``. Weights default
    to ``x^2``. Returns (scale (G,), codes (G, n) in [0, 2 * nmax - 1]).
    """
    xt = x.t().contiguous()  # (n, G)
    wt = xt * xt if weights is None else weights.t().contiguous()
    wx = wt * xt
    amax, mx = _signed_absmax(xt)
    zero = amax < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)

    def candidate(numerator: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lv = torch.round(div_scalar_by(numerator, mx) * xt).clamp(-nmax, nmax - 1)  # (n, G)
        return lv, seq_sum(wx * lv), seq_sum(wt * lv * lv)

    best_l, sumlx, suml2 = candidate(float(-nmax))
    scale = torch.where(suml2 != 0, sumlx / torch.where(suml2 != 0, suml2, 1.0), 0.0)
    best = scale * sumlx
    for k in range(-9, 10):
        if k == 0:
            continue
        lv, sumlx, suml2 = candidate(-f32(np.float32(nmax) + np.float32(0.1) * np.float32(k)))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_l = _pick(better, lv, best_l)
        scale = _pick(better, sumlx / torch.where(suml2 > 0, suml2, 1.0), scale)
        best = _pick(better, scale * sumlx, best)
    codes = (best_l + nmax).t()
    return torch.where(zero, 0.0, scale), torch.where(zero[:, None], 0.0, codes)


def make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric search with coordinate re-rounding (``make_q3_quants``, ``do_rmse = true``).

    Starts from ``iscale = -nmax / max`` and, five times over the group, moves each code to
    ``round(x * sum(w l^2) / sum(w x l))`` (computed without that element) when that raises
    ``sum(w x l)^2 / sum(w l^2)``. Weights are ``x^2``. Returns (scale (G,), codes (G, n)).
    """
    xt = x.t().contiguous()  # (n, G)
    wt = xt * xt
    wx = wt * xt
    amax, mx = _signed_absmax(xt)
    zero = amax < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    lv = torch.round(div_scalar_by(float(-nmax), mx) * xt).clamp(-nmax, nmax - 1)  # (n, G)
    sumlx = seq_sum(wx * lv)
    suml2 = seq_sum(wt * lv * lv)
    for _ in range(5):  # a sweep that changes nothing leaves the state as is, so no early exit is needed
        for i in range(xt.shape[0]):
            w, xi, li = wt[i], xt[i], lv[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w * li * li
            ok = slx > 0
            new_l = torch.round(xi * sl2 / torch.where(ok, slx, 1.0)).clamp(-nmax, nmax - 1)
            slx = slx + wx[i] * new_l
            sl2 = sl2 + w * new_l * new_l
            take = ok & (new_l != li) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            lv[i] = _pick(take, new_l, li)
            sumlx = _pick(take, slx, sumlx)
            suml2 = _pick(take, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, 1.0), 0.0)
    codes = (lv + nmax).t()
    return torch.where(zero, 0.0, scale), torch.where(zero[:, None], 0.0, codes)


def minmax_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain asymmetric RTN: ``scale = (max - min) / nmax`` with ``min <= 0``.

    Returns (scale (G,), the_min (G,) >= 0 so that ``x ~ scale * q - the_min``, codes (G, n)).
    """
    lo = x.amin(dim=1).clamp(max=0)
    hi = x.amax(dim=1)
    flat = hi == lo
    rng = torch.where(flat, torch.ones_like(hi), hi - lo)
    iscale = div_scalar_by(float(nmax), rng)
    codes = torch.round(iscale[:, None] * (x - lo[:, None])).clamp(0, nmax)
    scale = div_scalar_by(1.0, iscale)
    return torch.where(flat, 0.0, scale), -lo, torch.where(flat[:, None], 0.0, codes)


def make_qkx_quants(
    x: torch.Tensor,
    weights: torch.Tensor,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric weighted search (``make_qkx2_quants`` / ``make_qkx3_quants``; they differ only in
    their default weights, which the caller supplies here).

    Starts from the min/max fit, then for ``nstep + 1`` divisors ``rmin + rdelta * k + nmax`` rounds
    ``(x - min) / scale`` and solves the weighted least-squares problem for (scale, min) given the
    codes, keeping the candidate with the lowest weighted squared (or absolute, ``use_mad``) error.
    Returns (scale (G,), the_min (G,) with ``x ~ scale * q - the_min``, codes (G, n) in [0, nmax]).
    """
    xt = x.t().contiguous()  # (n, G)
    wt = weights.t().contiguous()
    lo = xt.amin(dim=0).clamp(max=0)
    hi = xt.amax(dim=0)
    flat = hi == lo
    rng = torch.where(flat, torch.ones_like(hi), hi - lo)
    sum_w = seq_sum(wt)
    sum_x = seq_sum(wt * xt)
    shifted = xt - lo

    def error(scale: torch.Tensor, mn: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
        diff = scale * lv + mn - xt
        return seq_sum(wt * (diff.abs() if use_mad else diff * diff))

    iscale = div_scalar_by(float(nmax), rng)
    best_l = torch.round(iscale * shifted).clamp(0, nmax)
    scale = div_scalar_by(1.0, iscale)
    mn = lo
    best_err = error(scale, mn, best_l)
    for k in range(nstep + 1):
        # ggml reuses its ``min`` variable: once a candidate wins, later candidates are placed
        # relative to the fitted min, not the group min.
        numerator = f32(np.float32(rmin) + np.float32(rdelta) * np.float32(k) + np.float32(nmax))
        span = torch.where(flat, torch.ones_like(hi), hi - mn)
        lv = torch.round(div_scalar_by(numerator, span) * (xt - mn)).clamp(0, nmax)
        wl = wt * lv
        sum_l, sum_l2, sum_xl = seq_sum(wl), seq_sum(wl * lv), seq_sum(wl * xt)
        det = sum_w * sum_l2 - sum_l * sum_l
        det_safe = torch.where(det > 0, det, 1.0)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det_safe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det_safe
        clip = this_min > 0
        this_scale = torch.where(clip, sum_xl / torch.where(sum_l2 != 0, sum_l2, 1.0), this_scale)
        this_min = torch.where(clip, 0.0, this_min)
        err = error(this_scale, this_min, lv)
        better = (det > 0) & (err < best_err) & ~flat
        best_l = _pick(better, lv, best_l)
        best_err = _pick(better, err, best_err)
        scale = _pick(better, this_scale, scale)
        mn = _pick(better, this_min, mn)
    return torch.where(flat, 0.0, scale), -mn, torch.where(flat[:, None], 0.0, best_l.t())


def make_qp_quants(x: torch.Tensor, nmax: int, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize non-negative values (the sub-scales or sub-mins of a super-block) to ``[0, nmax]``
    with one positive scale (``make_qp_quants``): a grid ``(nmax + 0.1 k) / max`` for k in -4..4
    scored by weighted squared error, then five sweeps of coordinate re-rounding and the
    least-squares scale. Returns (scale (G,), codes (G, n)).
    """
    xt = x.t().contiguous()  # (n, G)
    wt = weights.t().contiguous()
    wx = wt * xt
    mx = xt.amax(dim=0).clamp(min=0)
    zero = mx < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)

    def mse(iscale: torch.Tensor, clamp_top: bool) -> torch.Tensor:
        lv = torch.round(iscale * xt)
        if clamp_top:
            lv = lv.clamp(max=nmax)
        diff = xt - div_scalar_by(1.0, iscale) * lv
        return seq_sum(wt * diff * diff)

    iscale = div_scalar_by(float(nmax), mx)
    best_mse = mse(iscale, clamp_top=False)
    for k in range(-4, 5):
        if k == 0:
            continue
        cand = div_scalar_by(f32(np.float32(0.1) * np.float32(k) + np.float32(nmax)), mx)
        err = mse(cand, clamp_top=True)
        better = err < best_mse
        best_mse = _pick(better, err, best_mse)
        iscale = _pick(better, cand, iscale)
    lv = torch.round(iscale * xt).clamp(max=nmax)  # (n, G)
    sumlx = seq_sum(wx * lv)
    suml2 = seq_sum(wt * lv * lv)
    for _ in range(5):
        for i in range(xt.shape[0]):
            w, li = wt[i], lv[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w * li * li
            ok = (slx > 0) & (sl2 > 0)
            new_l = torch.round(xt[i] * sl2 / torch.where(ok, slx, 1.0)).clamp(max=nmax)
            slx = slx + wx[i] * new_l
            sl2 = sl2 + w * new_l * new_l
            take = ok & (new_l != li) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            lv[i] = _pick(take, new_l, li)
            sumlx = _pick(take, slx, sumlx)
            suml2 = _pick(take, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, 1.0), 0.0)
    return torch.where(zero, 0.0, scale), torch.where(zero[:, None], 0.0, lv.t())
