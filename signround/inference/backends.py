"""Inference backends for packed layers: one registry, capabilities as data, selection by priority.

A backend turns one decoded layer (``QuantizedWeight`` + bias) into a module that runs it. Each row
says which layouts, bits, symmetries and devices it handles, its priority (higher wins) and the
Python modules it needs; selection filters by all of these, prefers installed backends, and says
why (AutoRound reference §6 has the same shape with more rows). Only rows whose requirements are
installed are ever chosen; a missing requirement is reported, never swallowed.

| backend | layouts | bits | sym | devices | priority | requires |
|---|---|---|---|---|---|---|
| torch | gptq, gptq_raw_zero, awq_gemm | 2-8 | both | any | 0 | - |
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from ..quant.types import QuantizedWeight
from .layouts import Layout
from .qlinear import QuantLinear

__all__ = ["Backend", "BACKENDS", "register_backend", "select_backend", "backend_names"]

logger = logging.getLogger(__name__)

Builder = Callable[[QuantizedWeight, "torch.Tensor | None", torch.dtype, bool], torch.nn.Module]


@dataclass(frozen=True)
class Backend:
    name: str
    layouts: frozenset[Layout]
    bits: frozenset[int]
    sym: frozenset[bool]
    devices: frozenset[str]  # device types ("cpu", "cuda", ...); empty = any
    priority: int
    requires: tuple[str, ...]  # importable module names
    build: Builder  # (codes, bias, compute dtype, keep_codes) -> module
    description: str = ""

    def missing(self) -> list[str]:
        """Required modules that are not installed."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def mismatch(self, layout: Layout, qw: QuantizedWeight, device: str) -> str | None:
        """The first capability this backend lacks for a layer, as "supports X, got Y", or None."""
        if layout not in self.layouts:
            return f"supports layouts {sorted(x.value for x in self.layouts)}, got {layout.value}"
        if qw.bits not in self.bits:
            return f"supports bits {sorted(self.bits)}, got {qw.bits}"
        if qw.sym not in self.sym:
            return f"supports {'sym' if True in self.sym else 'asym'} only, got {'sym' if qw.sym else 'asym'}"
        if self.devices and device not in self.devices:
            return f"supports devices {sorted(self.devices)}, got {device}"
        return None


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, *, layouts: "frozenset[Layout] | set[Layout]", bits: "set[int] | range",
                     sym: "set[bool]" = frozenset({True, False}), devices: "set[str]" = frozenset(), priority: int = 0,
                     requires: tuple[str, ...] = (), description: str = "") -> Callable[[Builder], Builder]:
    def deco(build: Builder) -> Builder:
        if name in BACKENDS:
            raise RuntimeError(f"backend {name!r} is already registered")
        BACKENDS[name] = Backend(name, frozenset(layouts), frozenset(bits), frozenset(sym), frozenset(devices),
                                 priority, tuple(requires), build, description)
        return build

    return deco


@register_backend("torch", layouts=set(Layout), bits=range(2, 9), priority=0,
                  description="pure torch: dequantizes once at load, then a dense F.linear (as fast as the float model)")
def _build_torch(qw: QuantizedWeight, bias: torch.Tensor | None, dtype: torch.dtype, keep_codes: bool) -> torch.nn.Module:
    return QuantLinear(qw, bias, dtype, keep_codes=keep_codes)


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def select_backend(layout: Layout, qw: QuantizedWeight, device: str = "cpu",
                   requested: str | None = None) -> tuple[Backend, str]:
    """The backend for one layer and the reason it was chosen; ``requested`` forces one (or raises)."""
    device = torch.device(device).type
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"unknown backend {requested!r}; valid backends: {', '.join(backend_names())}")
        backend = BACKENDS[requested]
        problem = backend.mismatch(layout, qw, device)
        if problem:
            raise ValueError(f"backend {requested!r} cannot run this layer: it {problem}")
        missing = backend.missing()
        if missing:
            raise ValueError(f"backend {requested!r} needs {', '.join(missing)}, which is not installed")
        return backend, "requested with backend="
    skipped = []
    for backend in sorted(BACKENDS.values(), key=lambda b: (-b.priority, b.name)):
        problem = backend.mismatch(layout, qw, device)
        if problem is None and backend.missing():
            problem = f"not installed ({', '.join(backend.missing())})"
        if problem is None:
            why = f"highest-priority match (priority {backend.priority})"
            if skipped:
                why += "; skipped " + "; ".join(skipped)
            return backend, why
        skipped.append(f"{backend.name}: {problem}")
    raise ValueError(f"no backend can run a {qw.bits}-bit {'sym' if qw.sym else 'asym'} {layout.value} layer on "
                     f"{device}: " + "; ".join(skipped))
