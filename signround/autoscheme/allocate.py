"""From candidate layers, options and losses to one option per layer under the average-bit budget.

The budget is ``int(total_params * avg_bits)`` over the candidate and fixed layers (Linear weights only;
embeddings are not counted), minus the fixed layers' bits (user ``layer_config`` entries keep their
scheme). ``check_budget`` runs before any calibration: a target outside what the options can reach
fails there, listing each option's average bits. The lm_head, when quantized, only gets options of
>= 6 bits (only the widest when the target is above 6; the lowest-loss option when none has 6), a
rule dropped when it makes the budget infeasible (reference §8, "head trick").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..errors import BadInputError
from ..schemes import QuantScheme
from .bits import layer_bits
from .knapsack import solve

__all__ = ["Budget", "check_budget", "choose", "Choice", "HEAD_MIN_BITS"]

logger = logging.getLogger(__name__)

HEAD_MIN_BITS = 6


@dataclass(frozen=True)
class Budget:
    """The bits the candidate layers may take, and what each option alone would give (for messages)."""

    target: float
    total_params: int  # candidate + fixed layers
    fixed_bits: int
    bits: int  # for the candidates: int(total_params * target) - fixed_bits
    option_avg: dict[str, float] = field(default_factory=dict)  # each option on every candidate, average bpw


def _costs(shapes: Mapping[str, tuple[int, int]], scheme: QuantScheme, ignore: bool) -> int:
    return sum(layer_bits(scheme, s, ignore) for s in shapes.values())


def check_budget(avg_bits: float, options: Mapping[str, QuantScheme], candidates: Mapping[str, tuple[int, int]],
                 fixed: Mapping[str, tuple[QuantScheme, tuple[int, int]]], ignore_scale_zp_bits: bool = False) -> Budget:
    """The budget of the candidates, or a BadInputError when the target cannot be met (before any work)."""
    if not candidates:
        raise BadInputError("AutoScheme: no layer is left to choose a scheme for (every quantized layer is fixed by "
                            "layer_config or kept float)")
    n_cand = sum(o * i for o, i in candidates.values())
    total = n_cand + sum(o * i for _, (o, i) in fixed.values())
    fixed_bits = sum(layer_bits(s, shape, ignore_scale_zp_bits) for s, shape in fixed.values())
    option_avg = {name: _costs(candidates, s, ignore_scale_zp_bits) / n_cand for name, s in options.items()}
    listing = ", ".join(f"{n} {v:.4g}" for n, v in option_avg.items())
    lo, hi = min(option_avg.values()), max(option_avg.values())
    if not lo - 1e-9 <= avg_bits <= hi + 1e-9:
        raise BadInputError(f"AutoScheme avg_bits {avg_bits} is outside what the options reach [{lo:.4g}, {hi:.4g}] "
                            f"bits per weight (each option alone: {listing})")
    bits = int(total * avg_bits) - fixed_bits
    least = min(_costs(candidates, s, ignore_scale_zp_bits) for s in options.values())
    if bits < least:
        raise BadInputError(f"AutoScheme avg_bits {avg_bits}: the layer_config layers take {fixed_bits / max(total, 1):.4g} "
                            f"of it, the rest cannot fit even with the smallest option (each option alone: {listing})")
    return Budget(avg_bits, total, fixed_bits, bits, option_avg)


@dataclass(frozen=True)
class Choice:
    option: dict[str, str]  # layer -> option name
    bits: int  # candidate bits achieved
    loss: float
    head_rule: bool  # the lm_head rule held (False: relaxed, or no quantized head)


def _head_options(names: Sequence[str], options: Mapping[str, QuantScheme], loss: Mapping[str, float],
                  target: float) -> list[str]:
    wide = [n for n in names if options[n].bits >= HEAD_MIN_BITS]
    if not wide:
        return [min(names, key=lambda n: loss[n])]
    if target > HEAD_MIN_BITS:
        return [max(wide, key=lambda n: options[n].bits)]
    return wide


def choose(units: Sequence[Sequence[str]], shapes: Mapping[str, tuple[int, int]], options: Mapping[str, QuantScheme],
           scores: Mapping[str, Mapping[str, float]], budget: Budget, head: str | None = None,
           ignore_scale_zp_bits: bool = False) -> Choice:
    """The minimum summed score with the candidates' bits <= ``budget.bits``; a unit's layers share one option."""
    names = list(options)

    def problem(head_rule: bool):
        allowed, costs, losses = [], [], []
        for unit in units:
            unit_loss = {o: sum(scores[l][o] for l in unit) for o in names}
            opts = _head_options(names, options, unit_loss, budget.target) if head_rule and head in unit else names
            allowed.append(opts)
            costs.append([sum(layer_bits(options[o], shapes[l], ignore_scale_zp_bits) for l in unit) for o in opts])
            losses.append([unit_loss[o] for o in opts])
        return allowed, solve(costs, losses, budget.bits)

    rule = head is not None and any(head in u for u in units)
    allowed, sol = problem(rule)
    if sol is None and rule:
        logger.warning("AutoScheme: the lm_head rule (>= %d bits) does not fit the budget; relaxed", HEAD_MIN_BITS)
        rule = False
        allowed, sol = problem(False)
    if sol is None:
        raise BadInputError(f"AutoScheme: no assignment fits {budget.bits} bits")
    option = {l: allowed[u][k] for u, k in enumerate(sol.choice) for l in units[u]}
    return Choice(option, sol.bits, sol.loss, rule)
