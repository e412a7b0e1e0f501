"""Importance matrix: the mean squared input activation of each input column of a Linear.

Collected with temporary forward pre-hooks during the float pass that the block loop runs anyway,
so it costs no extra forward. Padding tokens (mask 0) are excluded.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["ImatrixCollector"]


class ImatrixCollector:
    """Accumulates sum(x^2) and the token count per watched module; ``.mask`` is the current rows' mask."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, float] = {}
        self.mask: torch.Tensor | None = None  # (B, T) bool for the rows being run, or None

    def add(self, name: str, x: torch.Tensor) -> None:
        """Account the activations ``x`` (B, T, in) entering module ``name``."""
        x = x.detach().float()
        if self.mask is not None:
            m = self.mask.to(x.device).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            sq = (x * x * m).sum(dim=(0, 1))
            n = float(m.sum())
        else:
            sq = (x * x).reshape(-1, x.shape[-1]).sum(dim=0)
            n = float(x.shape[0] * x.shape[1])
        if name in self.sums:
            self.sums[name] += sq.cpu()
            self.counts[name] += n
        else:
            self.sums[name] = sq.cpu()
            self.counts[name] = n

    def _hook(self, name: str):
        def pre(_mod, args):
            self.add(name, args[0])

        return pre

    @contextmanager
    def watch(self, modules: dict[str, torch.nn.Module]) -> Iterator["ImatrixCollector"]:
        handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in modules.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def result(self, name: str) -> torch.Tensor | None:
        if name not in self.sums or self.counts[name] == 0:
            return None
        return self.sums[name] / self.counts[name]
