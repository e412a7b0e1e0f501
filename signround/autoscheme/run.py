"""AutoScheme in a run: check the options and the budget, sensitivity pass(es), the knapsack, a layer_config.

Called by ``AutoRound`` once the formats are known and before any block is quantized. Everything that
needs no data is checked first (each option against every requested format, the target against what
the options reach); only then is calibration data read and the sensitivity pass run. The choice is
an exact-name ``layer_config`` for the candidate layers (the quantized layers the user's own
``layer_config`` does not fix), so the plan machinery, every method and every writer use it unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch

from ..errors import BadInputError
from ..formats import FORMATS, Format
from ..plan import LayerPlan, QuantPlan
from ..schemes import QuantScheme
from .allocate import check_budget, choose
from .bits import effective_scheme, layer_bits
from .config import AutoScheme
from .sensitivity import sensitivity
from .units import build_units

__all__ = ["AutoSchemeChoice", "choose_scheme", "DEFAULT_ROWS"]

logger = logging.getLogger(__name__)

DEFAULT_ROWS = (16, 256)  # calibration rows x tokens when neither AutoScheme nor the run sets them (reference §8)


@dataclass(frozen=True)
class AutoSchemeChoice:
    layer_config: dict[str, QuantScheme]  # candidate layer -> its scheme (exact names)
    record: dict[str, Any] = field(default_factory=dict)  # for signround.json


def _fixed(plan: QuantPlan) -> dict[str, LayerPlan]:
    return {n: p for n, p in plan.layers.items() if p.reason.startswith("layer_config")}


def choose_scheme(auto: AutoScheme, plan: QuantPlan, fmts: list[Format], build: Callable[[Mapping[str, Any]], QuantPlan],
                  model: torch.nn.Module, arch: Any, calibration: Callable[[int, int], tuple[torch.Tensor, Any]],
                  rows: tuple[int | None, int | None], weights: Any, runtime: Any) -> AutoSchemeChoice:
    """The per-layer choice for ``plan`` (built with the user's rules). ``build(layer_config)`` makes a plan with
    extra exact-name entries (so each option meets every format's rules); ``calibration(nsamples, seqlen)``
    reads the data; ``rows`` are the run's (nsamples, seqlen), used when AutoScheme leaves them unset."""
    options = auto.schemes
    fixed = _fixed(plan)
    cands = {p.name: p for p in plan.quantized() if p.name not in fixed}
    for name, scheme in options.items():  # each option for every candidate, under every format's rules
        try:
            build({n: effective_scheme(scheme, p.shape) for n, p in cands.items()})
        except (ValueError, BadInputError) as e:
            raise BadInputError(f"AutoScheme option {name}: {e}") from e
    shapes = {n: p.shape for n, p in cands.items()}
    budget = check_budget(auto.avg_bits, options, shapes, {n: (p.scheme, p.shape) for n, p in fixed.items()},
                          auto.ignore_scale_zp_bits)
    nsamples = auto.nsamples or rows[0] or DEFAULT_ROWS[0]
    seqlen = auto.seqlen or rows[1] or DEFAULT_ROWS[1]
    input_ids, mask = calibration(nsamples, seqlen)
    fuses = not fmts or any(FORMATS[f].fuses_qkv for f in fmts)  # no format yet (quantize()): any may follow
    units = build_units(list(cands), plan.blocks_prefix, arch.fused_groups if fuses else (), auto.shared_layers)
    head = plan.lm_head if plan.lm_head in cands else None
    t0 = time.time()
    choice = None
    for r in range(auto.rounds):  # round > 1: re-linearize at the previous choice, quantized in place
        current = None if choice is None else {n: effective_scheme(options[o], shapes[n])
                                               for n, o in choice.option.items()}
        scores = sensitivity(model, arch, cands, options, input_ids, mask, replace(weights, keep=False),
                             runtime.forward_batch_size, max_memory=runtime.max_memory, device=runtime.device,
                             current=current)
        previous, choice = choice, choose(units, shapes, options, scores, budget, head, auto.ignore_scale_zp_bits)
        moved = 0 if previous is None else sum(previous.option[n] != o for n, o in choice.option.items())
        logger.info("AutoScheme round %d/%d: estimated loss %.4g, %d layers changed option", r + 1, auto.rounds,
                    choice.loss, moved)
    seconds = time.time() - t0
    achieved = (budget.fixed_bits + choice.bits) / budget.total_params
    layer_config = {n: effective_scheme(options[o], shapes[n]) for n, o in choice.option.items()}
    logger.info("AutoScheme: %d layers in %d units, target %.4g bits, achieved %.4g bits per weight (sensitivity pass "
                "%.1f s on %d x %d tokens)", len(cands), len(units), auto.avg_bits, achieved, seconds,
                input_ids.shape[0], input_ids.shape[1])
    logger.info("AutoScheme choice:\n%s", table(choice.option, shapes, options, scores, auto.ignore_scale_zp_bits))
    record = {**auto.to_dict(), "achieved_avg_bits": round(achieved, 6), "budget_bits": budget.bits + budget.fixed_bits,
              "total_params": budget.total_params, "option_avg_bits": {k: round(v, 6) for k, v in budget.option_avg.items()},
              "nsamples": int(input_ids.shape[0]), "seqlen": int(input_ids.shape[1]), "head_rule": choice.head_rule,
              "sensitivity_seconds": round(seconds, 2),
              "fixed_layers": sorted(fixed), "layers": dict(choice.option)}
    return AutoSchemeChoice(layer_config, record)


def table(option: Mapping[str, str], shapes: Mapping[str, tuple[int, int]], options: Mapping[str, QuantScheme],
          scores: Mapping[str, Mapping[str, float]], ignore: bool = False) -> str:
    """One line per layer: shape, chosen option, its bits per weight and the estimated loss of each option."""
    names = list(options)
    rows = [("layer", "shape", "option", "bpw", *(f"score {o}" for o in names))]
    for n, o in option.items():
        s = shapes[n]
        rows.append((n, f"{s[0]}x{s[1]}", o, f"{layer_bits(options[o], s, ignore) / (s[0] * s[1]):.3f}",
                     *(f"{scores[n][k]:.3g}" for k in names)))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)
