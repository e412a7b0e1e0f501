"""One Linear being quantized to a ggml block type (``data_type="gguf"``): the ``LayerQuantizer`` for GGUF.

The starting point is llama.cpp's own choice for the type (``signround.quant.gguf.quantize_tensor``):
the importance-weighted scale/min searches with the double-quantized k-quant sub-scales when an
importance matrix was collected (optimised RTN), llama.cpp's reference search without one, or plain
min/max rounding (``optimize=False``, ``--disable_opt_rtn``), as ``quant.gguf.search_mode`` decides.
AutoRound reference §3.3.

SignRound then tunes one rounding offset ``v`` per weight, ``q = round(w / s + v)``, with every
block parameter (super-scale ``d``, ``dmin``, the quantized sub-scales and sub-mins) held fixed at
the search's values: ``fake_quantize`` is the differentiable map, ``requantize`` gives the final
codes, which are exactly what ``fake_quantize`` computed in the forward pass. There are no range
tunables: a GGUF scale is a float16 super-scale times a small integer, so it stays as searched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..method import Start
from ..plan import LayerPlan
from ..quant.gguf import GGUFQuantized, SearchMode, fake_quantize, quantize_tensor, requantize, search_mode
from .layer import V_BOUND, frozen_rows, register_layer_state

__all__ = ["GGUFLayerState", "make_gguf_state"]

logger = logging.getLogger(__name__)


@dataclass
class GGUFLayerState:
    """A GGUF layer: frozen weight (out, in), the searched parameters, and the tunable offsets."""

    plan: LayerPlan
    local_name: str
    w: torch.Tensor  # (out, in) float32, frozen
    init: GGUFQuantized  # the search's parameters and codes
    v: torch.Tensor | None = None  # (out, in) rounding offsets in [-V_BOUND, V_BOUND]

    def enable_tuning(self, minmax: bool, compile: bool = False) -> None:
        # minmax: the scales are double-quantized and stay as searched (module docstring);
        # compile: the ggml fake quantization always runs eagerly.
        self.v = torch.zeros_like(self.w, requires_grad=True)

    def tunables(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([self.v] if self.v is not None else []), []

    @torch.no_grad()
    def clamp_(self) -> None:
        if self.v is not None:
            self.v.clamp_(-V_BOUND, V_BOUND)

    def snapshot(self) -> torch.Tensor | None:
        return None if self.v is None else self.v.detach().clone()

    @torch.no_grad()
    def restore(self, snap: torch.Tensor | None) -> None:
        if self.v is not None and snap is not None:
            self.v.copy_(snap)

    def weight(self) -> torch.Tensor:
        """The fake-quantized weight in the module's layout, differentiable in ``v``."""
        w = fake_quantize(self.w, self.init.params, self.init.qtype, self.v)  # (out, in)
        return w.t() if self.plan.conv1d else w

    @torch.no_grad()
    def result(self) -> GGUFQuantized:
        """The codes: the search's own without tuning, else ``round(w / s + v)`` with the same parameters."""
        if self.v is None:
            return self.init.to("cpu")
        return requantize(self.w, self.init, self.v.detach()).to("cpu")


@register_layer_state("gguf")
def make_gguf_state(
    plan: LayerPlan,
    local_name: str,
    weight: torch.Tensor,
    imatrix: torch.Tensor | None = None,
    optimize: bool = True,
) -> GGUFLayerState:
    """Search the layer's ggml type (``plan.scheme.ggml_type``) on ``weight`` (module layout)."""
    w = frozen_rows(plan, weight)  # (out, in) float32
    mode = search_mode(Start.SEARCH if optimize else Start.MINMAX, imatrix is not None)
    init = quantize_tensor(w, plan.scheme.ggml_type, imatrix=imatrix if mode is SearchMode.IMATRIX else None,
                           mode=mode, name=plan.name)
    return GGUFLayerState(plan=plan, local_name=local_name, w=w, init=init)
