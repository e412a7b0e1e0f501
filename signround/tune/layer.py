"""One Linear being quantized: its frozen weight, its starting quantization, and the tunable SignRound tensors.

The state lives in these objects, never on the ``nn.Module``: the block is run with
``torch.func.functional_call`` and their fake-quantized weights substituted for its own.

Every data type provides a state with the ``LayerQuantizer`` protocol, registered by the scheme's
``data_type`` with ``@register_layer_state``; the tuner and the block loop only use the protocol.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

import torch

from ..plan import LayerPlan
from ..quant.grouping import from_groups, to_groups
from ..quant.int import IntGroupQuant, compiled_fake_quant, minmax_init, quantize_groups
from ..quant.search import search_int
from ..quant.types import QuantizedWeight

logger = logging.getLogger(__name__)

__all__ = ["LayerQuantizer", "LayerState", "frozen_rows", "make_layer_state", "register_layer_state", "V_BOUND", "RANGE_BOUNDS"]

V_BOUND = 0.5  # a rounding offset can flip each weight's rounding at most once
RANGE_BOUNDS = (0.5, 1.5)  # range multipliers alpha/beta around the initial range
RESULT_SLICE_ELEMENTS = 1 << 20  # result() rounds about this many weights at a time


class LayerQuantizer(Protocol):
    """What the SignRound tuner and the block loop need from one layer being quantized."""

    plan: LayerPlan
    local_name: str

    def enable_tuning(self, minmax: bool, compile: bool = False) -> None: ...  # create tunables (requires_grad)
    def tunables(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]: ...  # (rounding, range)
    def clamp_(self) -> None: ...  # project the tunables back into their bounds
    def snapshot(self) -> Any: ...
    def restore(self, snap: Any) -> None: ...
    def weight(self) -> torch.Tensor: ...  # fake-quantized weight in the module's layout, differentiable
    def result(self) -> Any: ...  # the codes (QuantizedWeight, GGUFQuantized...), with .dequantize(dtype)


StateBuilder = Callable[..., LayerQuantizer]
_BUILDERS: dict[str, StateBuilder] = {}


def register_layer_state(data_type: str) -> Callable[[StateBuilder], StateBuilder]:
    def deco(fn: StateBuilder) -> StateBuilder:
        if data_type in _BUILDERS:
            raise RuntimeError(f"a layer state for data_type {data_type!r} is already registered")
        _BUILDERS[data_type] = fn
        return fn

    return deco


@dataclass
class LayerState:
    """Integer group quantization (``data_type='int'``)."""

    plan: LayerPlan
    local_name: str  # name inside the block, e.g. "self_attn.q_proj"
    wg: torch.Tensor  # (n_groups_total, gs) float32, frozen
    init: IntGroupQuant
    v: torch.Tensor | None = None  # (n_groups_total, gs)
    alpha: torch.Tensor | None = None  # (n_groups_total, 1)
    beta: torch.Tensor | None = None  # (n_groups_total, 1), asym only
    compiled: bool = False  # use the torch.compile'd fake quantization while tuning

    @property
    def in_features(self) -> int:
        return self.plan.shape[1]

    def tunables(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(rounding tensors, range tensors) that require grad."""
        rounding = [self.v] if self.v is not None else []
        ranges = [t for t in (self.alpha, self.beta) if t is not None]
        return rounding, ranges

    def enable_tuning(self, minmax: bool, compile: bool = False) -> None:
        self.compiled = compile
        self.v = torch.zeros_like(self.wg, requires_grad=True)
        if minmax:
            n = self.wg.shape[0]
            self.alpha = torch.ones(n, 1, dtype=self.wg.dtype, device=self.wg.device, requires_grad=True)
            if not self.init.sym:
                self.beta = torch.ones(n, 1, dtype=self.wg.dtype, device=self.wg.device, requires_grad=True)

    @torch.no_grad()
    def clamp_(self) -> None:
        if self.v is not None:
            self.v.clamp_(-V_BOUND, V_BOUND)
        for t in (self.alpha, self.beta):
            if t is not None:
                t.clamp_(*RANGE_BOUNDS)

    def snapshot(self) -> list[torch.Tensor | None]:
        return [None if t is None else t.detach().clone() for t in (self.v, self.alpha, self.beta)]

    @torch.no_grad()
    def restore(self, snap: list[torch.Tensor | None]) -> None:
        for t, s in zip((self.v, self.alpha, self.beta), snap):
            if t is not None and s is not None:
                t.copy_(s)

    def weight(self) -> torch.Tensor:
        """The fake-quantized weight in the module's own layout (differentiable in v/alpha/beta)."""
        if self.compiled:
            try:
                p = self.init
                w_hat = compiled_fake_quant()(self.wg, p.s0, p.lo0, p.hi0, self.v, self.alpha, self.beta, p.bits, p.sym)
            except Exception as e:  # noqa: BLE001 - any compiler failure falls back to the eager path
                logger.warning("torch.compile of the fake quantization failed (%s: %s); using eager mode",
                               type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                self.compiled = False
                return self.weight()
        else:
            w_hat = quantize_groups(self.wg, self.init, self.v, self.alpha, self.beta)[0]
        w = from_groups(w_hat, self.in_features)  # (out, in)
        return w.t() if self.plan.conv1d else w

    @torch.no_grad()
    def result(self) -> QuantizedWeight:
        """The codes, a slice of output rows at a time: quantize_groups' full-size float temporaries
        were ~5x the weight, the peak of a streamed run. Every group is computed on its own, so
        slicing changes no value."""
        out_f, in_f = self.plan.shape
        g = self.wg.shape[0] // out_f
        step = max(1, RESULT_SLICE_ELEMENTS // (g * self.wg.shape[1]))
        codes = torch.empty(out_f, in_f, dtype=torch.uint8)
        scale = torch.empty(out_f, g, dtype=torch.float32)
        zero = torch.empty(out_f, g, dtype=torch.uint8)
        for r in range(0, out_f, step):
            rows = slice(r, min(r + step, out_f))
            groups = slice(rows.start * g, rows.stop * g)

            def part(t: torch.Tensor | None) -> torch.Tensor | None:
                return None if t is None else t[groups]

            init = replace(self.init, s0=part(self.init.s0), lo0=part(self.init.lo0), hi0=part(self.init.hi0))
            _, q, s, z = quantize_groups(self.wg[groups], init, part(self.v), part(self.alpha), part(self.beta))
            codes[rows] = from_groups(q, in_f).round().to(torch.uint8).cpu()
            scale[rows] = s.reshape(-1, g).float().cpu()
            zero[rows] = z.reshape(-1, g).round().to(torch.uint8).cpu()
        return QuantizedWeight(
            codes=codes,
            scale=scale,
            zero=zero,
            bits=self.plan.scheme.bits,
            group_size=self.wg.shape[1],
            sym=self.plan.scheme.sym,
        )


def frozen_rows(plan: LayerPlan, weight: torch.Tensor) -> torch.Tensor:
    """The weight every state starts from: float32, (out, in) whatever the module's layout (Conv1D is (in, out))."""
    w = weight.detach().float()
    return (w.t() if plan.conv1d else w).contiguous()


def make_layer_state(
    plan: LayerPlan,
    local_name: str,
    weight: torch.Tensor,
    imatrix: torch.Tensor | None = None,
    optimize: bool = True,
    tensor_amax: torch.Tensor | None = None,
) -> LayerQuantizer:
    """The state of one layer for its scheme's data type, starting from optimised RTN (or plain RTN).

    ``weight`` is in the module's layout; ``imatrix`` is (in_features,) mean squared input activation;
    ``tensor_amax`` (NVFP4 only) is the max |w| of the fused group whose global scale the layer shares.
    """
    builder = _BUILDERS.get(plan.scheme.data_type)
    if builder is None:
        raise ValueError(f"no quantizer for data_type {plan.scheme.data_type!r} (layer {plan.name}); "
                         f"known: {', '.join(sorted(_BUILDERS))}")
    if tensor_amax is not None:
        return builder(plan, local_name, weight, imatrix, optimize, tensor_amax=tensor_amax)
    return builder(plan, local_name, weight, imatrix, optimize)


@register_layer_state("int")
def make_int_state(
    plan: LayerPlan,
    local_name: str,
    weight: torch.Tensor,
    imatrix: torch.Tensor | None = None,
    optimize: bool = True,
) -> LayerState:
    """Group the weight and choose its starting range: opt-RTN search (default) or plain min/max."""
    w = frozen_rows(plan, weight)  # (out, in) float32
    scheme = plan.scheme
    wg = to_groups(w, scheme.group_size)  # (out * n_groups, gs)
    if optimize:
        imat_row = None if imatrix is None else to_groups(imatrix.float().to(w.device).view(1, -1), scheme.group_size)
        init = search_int(wg, scheme.bits, scheme.sym, imatrix_row=imat_row)
    else:
        init = minmax_init(wg, scheme.bits, scheme.sym)
    return LayerState(plan=plan, local_name=local_name, wg=wg, init=init)
