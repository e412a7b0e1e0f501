"""Named bundles of tuning settings (AutoRound reference §1.2). A recipe fills only what the user left unset."""

from __future__ import annotations

from typing import Any

__all__ = ["RECIPES", "apply_recipe"]

RECIPES: dict[str, dict[str, Any]] = {
    # The API's own defaults, which depend on the run: iters 200 (0 for GGUF formats); calibration
    # 128 x 2048 tokens when tuning, 32 x 512 for optimised RTN; batch 8.
    "default": {},
    "best": {"iters": 1000, "nsamples": 512, "seqlen": 2048, "batch_size": 8},
    "light": {"iters": 50, "nsamples": 128, "seqlen": 2048, "batch_size": 8, "lr": 5e-3},
    "rtn": {"iters": 0, "nsamples": 0, "disable_opt_rtn": True},
    "opt_rtn": {"iters": 0, "nsamples": 32, "seqlen": 512, "batch_size": 8},  # only the importance matrix
}


def apply_recipe(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Return ``given`` with the recipe's values filled in where ``given`` has None (or lacks the key)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    out = dict(given)
    for key, value in RECIPES[name].items():
        if out.get(key) is None:
            out[key] = value
    return out
