"""Registry of format writers and the one entry point that writes a quantized model in a format.

A writer is a pure function ``(ExportInput, folder) -> None`` that fills ``folder`` with the
format's files; the entry point wraps it in an atomic directory and adds the run log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..formats import Format, gguf_mix, is_gguf
from ..method import Start
from ..plan import QuantPlan
from ..quant.types import QuantizedWeight
from ..record import write_run
from ..schemes import QuantScheme
from .io import atomic_output_dir

__all__ = ["ExportInput", "register_writer", "WRITERS", "export_model", "export_dir_name"]

logger = logging.getLogger(__name__)


@dataclass
class ExportInput:
    """Everything a writer reads: the typed results, never numbers left on the model by the block loop."""

    model: torch.nn.Module  # config, float tensors and tokenizer side; quantized layers are read from ``weights``
    tokenizer: Any
    plan: QuantPlan
    weights: dict[str, QuantizedWeight]
    settings: dict[str, Any] = field(default_factory=dict)  # tuning hyper-parameters, for the config
    source: str = ""  # the model the user quantized (for `signround eval`)
    log: dict[str, Any] = field(default_factory=dict)  # per-block and per-layer report
    imatrix: dict[str, torch.Tensor] = field(default_factory=dict)  # module name -> (in,) importance (GGUF)
    start: Start = Start.SEARCH  # how tensors the writer quantizes itself (GGUF token_embd) choose their scales


Writer = Callable[[ExportInput, Path], None]
WRITERS: dict[Format, Writer] = {}


def register_writer(fmt: Format) -> Callable[[Writer], Writer]:
    def deco(fn: Writer) -> Writer:
        if fmt in WRITERS:
            raise RuntimeError(f"a writer for format {fmt.value} is already registered")
        WRITERS[fmt] = fn
        return fn

    return deco


def export_dir_name(model_name: str, scheme: QuantScheme, fmt: Format) -> str:
    """``<model>-<scheme>-<format>`` (``<model>-gguf-<mix>``): known before the model loads, so it can be checked."""
    if is_gguf(fmt):
        return f"{model_name}-gguf-{gguf_mix(fmt)}"
    return f"{model_name}-{scheme.short_name()}-{fmt.value}"


def export_model(data: ExportInput, fmt: Format, target: "str | Path", overwrite: bool = False) -> Path:
    """Write ``data`` in format ``fmt`` to the directory ``target``, atomically.

    ``target`` must be new, empty, or (with ``overwrite``) a previous signround output (``io.check_output_target``).
    """
    from . import auto_awq, auto_gptq, auto_round, fake  # noqa: F401  (writers register themselves)
    from .gguf import pipeline  # noqa: F401

    if fmt not in WRITERS:
        known = ", ".join(f.value for f in WRITERS)
        raise ValueError(f"no writer for format {fmt.value}; available: {known}")
    target = Path(target)
    with atomic_output_dir(target, overwrite) as tmp:
        WRITERS[fmt](data, tmp)
        write_run(tmp, {"format": fmt.value, "source_model": data.source, "settings": data.settings,
                        "plan": data.plan.to_dict()})
        if data.log:
            (tmp / "quant_log.json").write_text(json.dumps(data.log, indent=1, default=str) + "\n")
    logger.info("wrote %s checkpoint to %s", fmt.value, target)
    return target
