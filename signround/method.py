"""The quantization method as a type: what a run does to each planned Linear, decided once.

- ``RTN``: round to nearest with min/max (or absmax) scales; needs no data and no forward pass.
- ``OPT_RTN``: an importance-weighted scale search per layer; calibration data only feeds the
  importance matrix (mean squared input per column), so it needs few tokens.
- ``SIGNROUND``: tunes each weight's rounding and each group's range, block by block, on calibration
  data; starts from the optimised-RTN search (``Start.SEARCH``) or from min/max (``Start.MINMAX``).

Every method writes every format today (GGUF included); ``Method.check_format`` is where a rule goes
when one appears, so that it fails in the plan.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Method", "Start", "Optimizer", "method_for"]


class Method(str, Enum):
    RTN = "rtn"
    OPT_RTN = "opt_rtn"
    SIGNROUND = "signround"

    @property
    def needs_data(self) -> bool:
        return self is not Method.RTN

    @property
    def tunes(self) -> bool:
        return self is Method.SIGNROUND

    @property
    def label(self) -> str:
        return {"rtn": "RTN", "opt_rtn": "optimised RTN", "signround": "SignRound"}[self.value]


class Start(str, Enum):
    """How each layer's first scales are chosen (the result for RTN / optimised RTN, the start for SignRound)."""

    SEARCH = "search"  # importance-weighted search (llama.cpp's imatrix searches for GGUF types)
    MINMAX = "minmax"  # plain min/max (absmax) scales

    @property
    def searches(self) -> bool:
        return self is Start.SEARCH


class Optimizer(str, Enum):
    """SignRound's update rule: signed gradient descent (the paper's), or AdamW (AutoRound's ``enable_adam``)."""

    SIGN = "sign"
    ADAM = "adam"


def method_for(iters: int, disable_opt_rtn: bool) -> tuple[Method, Start]:
    """The method and start that ``iters`` and ``disable_opt_rtn`` stand for (AutoRound's convention)."""
    start = Start.MINMAX if disable_opt_rtn else Start.SEARCH
    if iters > 0:
        return Method.SIGNROUND, start
    return (Method.RTN if disable_opt_rtn else Method.OPT_RTN), start
