"""Activation quantization of Linear inputs: calibrated maxima, and hooks that fake-quantize the inputs.

A scheme with ``act_bits < 16`` quantizes what enters its Linear (``quant/act.py`` has the numerics).
Dynamic schemes need nothing but the input; static ones (FP8_STATIC, NVFP4's global scale) need the
largest |input| seen on the calibration rows, collected on the float pass that the block loop runs
anyway (AutoRound reference §4.4), with padding tokens left out.

The same hooks serve three places: tuning and the chain pass (temporary, ``quantized_inputs``), the
model that ``quantize()`` leaves in memory and the one ``load_quantized`` builds (``attach_quantized_inputs``),
so a quantized model computes the same logits wherever it runs.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

import torch

from ..errors import BadInputError
from ..plan import LayerPlan
from ..schemes import QuantScheme

__all__ = ["ActMaxCollector", "act_schemes", "quantized_inputs", "attach_quantized_inputs", "static_names",
           "check_static_needs_data"]

logger = logging.getLogger(__name__)


def act_schemes(plans: Iterable[LayerPlan], prefix: str = "") -> dict[str, QuantScheme]:
    """{name without ``prefix``: scheme} of the planned layers whose inputs are quantized."""
    return {p.name[len(prefix):]: p.scheme for p in plans if p.quantized and p.scheme.quantizes_activations}


def static_names(schemes: Mapping[str, QuantScheme]) -> list[str]:
    return [n for n, s in schemes.items() if s.quantizes_activations and not s.act_dynamic]


def check_static_needs_data(schemes: Mapping[str, QuantScheme], method: Any) -> None:
    """Static activation scales come from calibration: plain RTN, which reads no data, cannot make them."""
    static = static_names(schemes)
    if static and not method.needs_data:
        raise BadInputError(f"static activations ({schemes[static[0]].short_name()}, layer {static[0]} and "
                            f"{len(static) - 1} more) are calibrated on data, and plain RTN (iters 0 with "
                            f"disable_opt_rtn) reads none: drop disable_opt_rtn (optimised RTN), tune (iters > 0), "
                            f"or use dynamic activations (act_dynamic=True)")


class ActMaxCollector:
    """Running max |input| per watched module over the rows run (``mask``: the current rows' (B, T) tokens)."""

    def __init__(self) -> None:
        self.max: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None

    def add(self, name: str, x: torch.Tensor) -> None:
        x = x.detach()
        if self.mask is not None and x.dim() == 3:
            x = x[self.mask.to(x.device).bool()]  # (tokens, in): padding left out
        m = x.abs().amax().float().cpu() if x.numel() else torch.zeros((), dtype=torch.float32)
        self.max[name] = torch.maximum(self.max[name], m) if name in self.max else m

    @contextmanager
    def watch(self, modules: Mapping[str, torch.nn.Module]) -> Iterator["ActMaxCollector"]:
        handles = [m.register_forward_pre_hook(lambda _m, args, n=n: self.add(n, args[0])) for n, m in modules.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def _pre_hook(scheme: QuantScheme, static_max: torch.Tensor | None):
    from ..quant.act import fake_quantize_activation

    def pre(_module, args):
        return (fake_quantize_activation(args[0], scheme, static_max), *args[1:])

    return pre


def _check_static(name: str, scheme: QuantScheme, act_max: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    if scheme.act_dynamic:
        return None
    if name not in act_max:
        raise ValueError(f"layer {name} has static activations ({scheme.short_name()}) but no calibrated maximum")
    return act_max[name]


def _register(modules: Mapping[str, torch.nn.Module], schemes: Mapping[str, QuantScheme],
              act_max: Mapping[str, torch.Tensor]) -> list:
    return [modules[n].register_forward_pre_hook(_pre_hook(s, _check_static(n, s, act_max)))
            for n, s in schemes.items() if n in modules]


@contextmanager
def quantized_inputs(modules: Mapping[str, torch.nn.Module], schemes: Mapping[str, QuantScheme],
                     act_max: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """While inside, each module named in ``schemes`` sees its input fake-quantized (gradients pass straight)."""
    handles = _register(modules, schemes, act_max)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def attach_quantized_inputs(model: torch.nn.Module, schemes: Mapping[str, QuantScheme],
                            act_max: Mapping[str, torch.Tensor]) -> int:
    """Make ``model``'s layers quantize their inputs for good (a quantized model handed to the user); returns
    how many. ``schemes`` and ``act_max`` are keyed by the full module name."""
    if not schemes:
        return 0
    modules = {n: model.get_submodule(n) for n in schemes}
    _register(modules, schemes, act_max)
    kinds = sorted({s.describe()[1] for s in schemes.values()})
    logger.info("%d layers quantize their inputs (%s)", len(modules), "; ".join(kinds))
    return len(modules)
