"""One call from an in-memory float HF model to a llama.cpp-ready GGUF file of a named mix."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ...quant.gguf import SearchMode
from .arch import arch_spec, layer_count
from .mixes import TypeChoice, format_plan, mix_spec, plan_tensor_types
from .writer import model_tensors, write_gguf

__all__ = ["gguf_plan", "hf_tensor_types", "export_gguf"]

logger = logging.getLogger(__name__)


def gguf_plan(model: torch.nn.Module, mix: str, has_imatrix: bool = False):
    """The per-tensor type plan ``{gguf name: TypeChoice}`` llama.cpp would make for ``model`` in ``mix``."""
    spec = arch_spec(model)
    config = model.config
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    n_expert = int(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0)
    tensors = [(s.gguf_name, s.gguf_shape) for s in model_tensors(model, spec)]
    return plan_tensor_types(tensors, mix, layer_count(config), n_head // n_kv, n_expert, has_imatrix)


def hf_tensor_types(model: torch.nn.Module, mix: str, has_imatrix: bool = False) -> dict[str, tuple[str, TypeChoice]]:
    """``{HF parameter name: (GGUF name, TypeChoice)}`` for every tensor the file of ``mix`` will hold.

    Raises (before any work) for an architecture the writer does not know, naming it.
    """
    spec = arch_spec(model)
    sources = model_tensors(model, spec)
    plan = gguf_plan(model, mix, has_imatrix)
    return {s.hf_name: (s.gguf_name, plan[s.gguf_name]) for s in sources}


def export_gguf(
    model: torch.nn.Module,
    tokenizer: Any,
    out_path: str | os.PathLike,
    mix: str = "q4_k_m",
    imatrix: Mapping[str, torch.Tensor] | None = None,
    disable_opt_rtn: bool = False,
    tokenizer_pre: str | None = None,
) -> Path:
    """Quantize a float model to ``mix`` and write it to ``out_path`` (atomically).

    Default: optimised RTN, i.e. llama.cpp's scale searches, importance-weighted for the Linears
    found in ``imatrix`` (HF module name -> (in_features,) mean squared activations).
    ``disable_opt_rtn``: plain min/max rounding instead of the searches.
    """
    spec = mix_spec(mix)  # unknown mix: fails here, before any work
    arch_spec(model)  # unknown architecture: idem
    if mix.strip().lower().removeprefix("gguf:") == "q2_k_s" and not imatrix:
        logger.warning("q2_k_s without an importance matrix: llama.cpp refuses this mix without one (quality suffers)")
    plan = gguf_plan(model, mix, has_imatrix=bool(imatrix))
    logger.debug("GGUF plan for %s:\n%s", mix, format_plan(plan))
    if disable_opt_rtn:
        mode = SearchMode.RTN
    else:
        mode = SearchMode.IMATRIX if imatrix else SearchMode.REF
    start = time.perf_counter()
    path = write_gguf(
        model, tokenizer, out_path, {n: c.qtype for n, c in plan.items()},
        file_type=int(spec.file_type), imatrix=imatrix, mode=mode, tokenizer_pre=tokenizer_pre,
    )
    logger.info("exported %s as %s in %.1f s", type(model).__name__, mix, time.perf_counter() - start)
    return path
