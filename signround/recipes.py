"""Named bundles of tuning settings (AutoRound reference §1.2). A recipe fills only what the user left unset.

The defaults themselves live in ``options.OPTIONS`` (and the run-dependent ones in ``config.resolve_run``);
``default`` therefore fills nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RECIPES", "recipe_values"]

RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "best": {"iters": 1000, "nsamples": 512, "seqlen": 2048},
    "light": {"iters": 50, "nsamples": 128, "seqlen": 2048, "lr": 5e-3},
    "rtn": {"iters": 0, "disable_opt_rtn": True},  # reads no calibration data
    "opt_rtn": {"iters": 0},  # calibration only feeds the importance matrix
}


def recipe_values(name: str) -> dict[str, Any]:
    """The values of recipe ``name``, or a ValueError listing the known recipes."""
    if name not in RECIPES:
        from .errors import BadInputError

        raise BadInputError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return dict(RECIPES[name])
