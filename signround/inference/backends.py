"""Inference backends for packed layers: one registry, capabilities as data, selection by priority.

A backend turns one decoded layer (``QuantizedWeight``/``FPQuantized`` + bias) into a module that runs it.
Each row says which layouts, weight data types (int or fp), bits, group sizes, symmetries, compute
dtypes and devices it handles, its priority (higher wins) and the Python modules it needs; selection
filters by all of these, prefers installed backends, and says why (AutoRound reference §6 has the same
shape with more rows). Only rows whose requirements are installed are ever chosen; a missing
requirement is reported, never swallowed.

The default keeps every layer packed in memory: the torch int4/int8 kernels where they apply (bfloat16
compute), else a dequantize-on-the-fly layer (codes packed, the weight built in each forward and
dropped, bit-identical to ``dequant``). ``backend="dequant"`` dequantizes once at load: float-model speed
at float-model memory.

| backend | data | bits | group size | sym | dtypes | devices | priority |
|---|---|---|---|---|---|---|---|
| packed_int4 | int | 4 | multiple of 32, or per row | both | bfloat16 | cpu | 30 |
| packed_int8 | int | 8 | any | both | bfloat16 | cpu | 30 |
| packed_dequant | int, fp | 2-8 | any | both | any | any | 10 |
| dequant | int, fp | 2-8 | any | both | any | any | 0 |

Every row takes every layout (the layouts decode to the same codes objects before a backend sees them).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from ..quant.fp_types import FPQuantized
from ..quant.types import QuantizedWeight
from .layouts import Layout
from .packed_dequant import DequantOnTheFlyLinear
from .packed_int4 import GROUP_MULTIPLE, PackedInt4Linear
from .packed_int8 import PackedInt8Linear
from .qlinear import QuantLinear

__all__ = ["Backend", "BACKENDS", "register_backend", "select_backend", "backend_names"]

logger = logging.getLogger(__name__)

Codes = "QuantizedWeight | FPQuantized"
Builder = Callable[[Codes, "torch.Tensor | None", torch.dtype, bool], torch.nn.Module]
DATA_KINDS = frozenset({"int", "fp"})


def data_kind(qw: Codes) -> str:
    """"fp" for FP/MX codes, "int" for integer ones."""
    return "fp" if isinstance(qw, FPQuantized) else "int"


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
    data: frozenset[str] = DATA_KINDS  # weight data kinds: "int", "fp"
    group_multiple: int = 1  # a layer's group size must be a multiple of this, unless one group spans the row
    dtypes: frozenset[torch.dtype] = frozenset()  # compute dtypes; empty = any

    def missing(self) -> list[str]:
        """Required modules that are not installed."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def mismatch(self, layout: Layout, qw: Codes, device: str, dtype: torch.dtype = torch.float32) -> str | None:
        """The first capability this backend lacks for a layer, as "supports X, got Y", or None."""
        if layout not in self.layouts:
            return f"supports layouts {sorted(x.value for x in self.layouts)}, got {layout.value}"
        if data_kind(qw) not in self.data:
            return f"supports {'/'.join(sorted(self.data))} weights only, got {data_kind(qw)}"
        if qw.bits not in self.bits:
            return f"supports bits {sorted(self.bits)}, got {qw.bits}"
        if qw.group_size < qw.shape[1] and qw.group_size % self.group_multiple:
            return f"supports group sizes that are multiples of {self.group_multiple}, got {qw.group_size}"
        if qw.sym not in self.sym:
            return f"supports {'sym' if True in self.sym else 'asym'} only, got {'sym' if qw.sym else 'asym'}"
        if self.devices and device not in self.devices:
            return f"supports devices {sorted(self.devices)}, got {device}"
        if self.dtypes and dtype not in self.dtypes:
            names = sorted(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"supports compute dtypes {names}, got {str(dtype).removeprefix('torch.')} (load with dtype=" \
                   f"{names[0]!r})"
        return None


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, *, layouts: "frozenset[Layout] | set[Layout]", bits: "set[int] | range",
                     sym: "set[bool]" = frozenset({True, False}), devices: "set[str]" = frozenset(), priority: int = 0,
                     requires: tuple[str, ...] = (), description: str = "", data: "set[str]" = DATA_KINDS,
                     group_multiple: int = 1, dtypes: "set[torch.dtype]" = frozenset()) -> Callable[[Builder], Builder]:
    def deco(build: Builder) -> Builder:
        if name in BACKENDS:
            raise RuntimeError(f"backend {name!r} is already registered")
        BACKENDS[name] = Backend(name, frozenset(layouts), frozenset(bits), frozenset(sym), frozenset(devices),
                                 priority, tuple(requires), build, description, frozenset(data), group_multiple,
                                 frozenset(dtypes))
        return build

    return deco


@register_backend("dequant", layouts=set(Layout), bits=range(2, 9), priority=0,
                  description="dequantizes once at load, then a dense F.linear (float-model speed and memory)")
def _build_dequant(qw: Codes, bias: torch.Tensor | None, dtype: torch.dtype, keep_codes: bool) -> torch.nn.Module:
    return QuantLinear(qw, bias, dtype, keep_codes=keep_codes)


@register_backend("packed_dequant", layouts=set(Layout), bits=range(2, 9), priority=10,
                  description="codes packed in memory, the weight dequantized in each forward (exact, slower)")
def _build_packed_dequant(qw: Codes, bias: torch.Tensor | None, dtype: torch.dtype, keep_codes: bool) -> torch.nn.Module:
    return DequantOnTheFlyLinear(qw, bias, dtype, keep_codes=keep_codes)


@register_backend("packed_int4", layouts=set(Layout), bits={4}, data={"int"}, group_multiple=GROUP_MULTIPLE,
                  devices={"cpu"}, dtypes={torch.bfloat16}, priority=30,
                  description="torch's CPU int4 kernel (_weight_int4pack_mm_for_cpu) on codes packed two per byte")
def _build_packed_int4(qw: Codes, bias: torch.Tensor | None, dtype: torch.dtype, keep_codes: bool) -> torch.nn.Module:
    return PackedInt4Linear(qw, bias, dtype, keep_codes=keep_codes)


@register_backend("packed_int8", layouts=set(Layout), bits={8}, data={"int"}, devices={"cpu"},
                  dtypes={torch.bfloat16}, priority=30,
                  description="torch's int8 kernel (_weight_int8pack_mm), once per group, on int8 codes")
def _build_packed_int8(qw: Codes, bias: torch.Tensor | None, dtype: torch.dtype, keep_codes: bool) -> torch.nn.Module:
    return PackedInt8Linear(qw, bias, dtype, keep_codes=keep_codes)


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def select_backend(layout: Layout, qw: Codes, device: str = "cpu", requested: str | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[Backend, str]:
    """The backend for one layer computing in ``dtype`` and the reason it was chosen; ``requested`` forces one
    (or raises)."""
    device = torch.device(device).type
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"unknown backend {requested!r}; valid backends: {', '.join(backend_names())}")
        backend = BACKENDS[requested]
        problem = backend.mismatch(layout, qw, device, dtype)
        if problem:
            raise ValueError(f"backend {requested!r} cannot run this layer: it {problem}")
        missing = backend.missing()
        if missing:
            raise ValueError(f"backend {requested!r} needs {', '.join(missing)}, which is not installed")
        return backend, "requested with backend="
    skipped = []
    for backend in sorted(BACKENDS.values(), key=lambda b: (-b.priority, b.name)):
        problem = backend.mismatch(layout, qw, device, dtype)
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
