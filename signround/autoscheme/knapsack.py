"""Exact allocation: a multiple-choice knapsack over units, by dynamic programming on integer total bits.

Each unit (layers that must share one option) picks one choice with a cost in bits and a loss. States
are (total bits, summed loss); after each unit only the Pareto front is kept (loss strictly decreasing
as bits increase) and states that cannot fit even with the cheapest choices of the remaining units are
dropped, so the result is the exact minimum-loss assignment within the budget (reference §8,
``choose_bits_per_layer_with_path``, without its beam). Vectorised with numpy: a front of a million
states is a few arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Solution", "solve"]


@dataclass(frozen=True)
class Solution:
    choice: tuple[int, ...]  # per unit, the index of its chosen option
    bits: int
    loss: float


def solve(costs: Sequence[Sequence[int]], losses: Sequence[Sequence[float]], budget: int) -> Solution | None:
    """The minimum-loss choice per unit with sum of costs <= ``budget``; None when even the cheapest does not fit.

    ``costs[u][k]`` / ``losses[u][k]``: bits and loss of unit ``u`` under its choice ``k``. Among plans of equal
    loss the cheaper one wins.
    """
    n = len(costs)
    if n != len(losses) or any(len(c) != len(l) or not c for c, l in zip(costs, losses)):
        raise ValueError("costs and losses need the same non-empty choice lists per unit")
    cheapest = [min(c) for c in costs]
    rest = np.zeros(n + 1, dtype=np.int64)  # rest[u]: least bits units u.. can take
    for u in range(n - 1, -1, -1):
        rest[u] = rest[u + 1] + cheapest[u]
    if rest[0] > budget:
        return None
    f_bits = np.zeros(1, dtype=np.int64)
    f_loss = np.zeros(1, dtype=np.float64)
    trail: list[tuple[np.ndarray, np.ndarray]] = []  # per unit: (parent state index, choice) of each kept state
    for u in range(n):
        c = np.asarray(costs[u], dtype=np.int64)
        l_ = np.asarray(losses[u], dtype=np.float64)
        k = len(c)
        bits = (f_bits[:, None] + c[None, :]).ravel()
        loss = (f_loss[:, None] + l_[None, :]).ravel()
        parent = np.repeat(np.arange(len(f_bits)), k)
        choice = np.tile(np.arange(k), len(f_bits))
        fits = bits + rest[u + 1] <= budget
        bits, loss, parent, choice = bits[fits], loss[fits], parent[fits], choice[fits]
        order = np.lexsort((loss, bits))  # by bits, then loss
        bits, loss, parent, choice = bits[order], loss[order], parent[order], choice[order]
        keep = np.ones(len(bits), dtype=bool)
        if len(bits) > 1:
            keep[1:] = loss[1:] < np.minimum.accumulate(loss)[:-1]
        f_bits, f_loss = bits[keep], loss[keep]
        trail.append((parent[keep], choice[keep]))
    best = int(np.argmin(f_loss))  # on the front the least loss is the most bits: ties resolved to the cheapest
    total, value = int(f_bits[best]), float(f_loss[best])
    picked = []
    for parent, choice in reversed(trail):
        picked.append(int(choice[best]))
        best = int(parent[best])
    return Solution(tuple(reversed(picked)), total, value)
