"""One call from an in-memory float HF model to a llama.cpp-ready GGUF file of a named mix."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ...method import Start
from ...formats.gguf_arch import arch_spec
from ...formats.gguf_mixes import format_plan, mix_spec
from ...formats.gguf_tensors import gguf_plan
from .writer import write_gguf

__all__ = ["export_gguf"]

logger = logging.getLogger(__name__)


def export_gguf(
    model: torch.nn.Module,
    tokenizer: Any,
    out_path: str | os.PathLike,
    mix: str = "q4_k_m",
    imatrix: Mapping[str, torch.Tensor] | None = None,
    start: Start = Start.SEARCH,
    tokenizer_pre: str | None = None,
) -> Path:
    """Quantize a float model to ``mix`` and write it to ``out_path`` (atomically).

    Default: optimised RTN, i.e. llama.cpp's scale searches, importance-weighted for the Linears
    found in ``imatrix`` (HF module name -> (in_features,) mean squared activations).
    ``start``: ``Start.MINMAX`` for plain min/max rounding instead of the searches (``search_mode``).
    """
    spec = mix_spec(mix)  # unknown mix: fails here, before any work
    arch_spec(model)  # unknown architecture: idem
    if mix.strip().lower().removeprefix("gguf:") == "q2_k_s" and not imatrix:
        logger.warning("q2_k_s without an importance matrix: llama.cpp refuses this mix without one (quality suffers)")
    plan = gguf_plan(model, mix, has_imatrix=bool(imatrix))
    logger.debug("GGUF plan for %s:\n%s", mix, format_plan(plan))
    t0 = time.perf_counter()
    path = write_gguf(
        model, tokenizer, out_path, {n: c.qtype for n, c in plan.items()},
        file_type=int(spec.file_type), imatrix=imatrix, start=start, tokenizer_pre=tokenizer_pre,
    )
    logger.info("exported %s as %s in %.1f s", type(model).__name__, mix, time.perf_counter() - t0)
    return path
