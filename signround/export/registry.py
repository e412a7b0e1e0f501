"""Registry of format writers and the one entry point that writes a quantized model in a format.

A writer is a factory ``(ExportInput, folder) -> ExportSink``: the sink takes layers' codes as they
finish (``add``) and completes the files (``finish``), so a streamed run writes its output while
quantizing. ``open_export`` wraps a sink in an atomic directory and adds the run record;
``export_model`` is the same for results already in memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Protocol

import torch

from ..formats import Format, gguf_mix, is_gguf
from ..method import Start
from ..model.weights import ModuleSource, WeightSource
from ..plan import QuantPlan
from ..quant.types import QuantizedWeight
from ..record import write_run
from ..schemes import QuantScheme
from .io import DEFAULT_SHARD_BYTES, atomic_output_dir

__all__ = ["ExportInput", "ExportSink", "register_writer", "WRITERS", "export_model", "open_export", "export_dir_name"]

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
    tensors: "WeightSource | None" = None  # where float tensors are read from (None: the model's own)
    max_shard_bytes: int = DEFAULT_SHARD_BYTES  # safetensors shards (transformers' max_shard_size)
    # module name -> calibrated max |input| (0-d float32) of layers with static activations (FP8_STATIC, NVFP4):
    # FP8 writes input_scale = act_max / 448, NVFP4 input_global_scale = 448 * 6 / act_max
    act_max: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tensors is None:
            self.tensors = ModuleSource(self.model)


class ExportSink(Protocol):
    """One output being written: ``add`` takes finished layers' codes, ``finish`` completes the files."""

    def add(self, weights: Mapping[str, QuantizedWeight]) -> None: ...

    def finish(self) -> None: ...  # reads the settings, log and imatrix the caller completed in ExportInput


# (what to write, the folder being filled) -> the sink that fills it
SinkFactory = Callable[[ExportInput, Path], ExportSink]
WRITERS: dict[Format, SinkFactory] = {}


def register_writer(fmt: Format) -> Callable[[SinkFactory], SinkFactory]:
    def deco(fn: SinkFactory) -> SinkFactory:
        if fmt in WRITERS:
            raise RuntimeError(f"a writer for format {fmt.value} is already registered")
        WRITERS[fmt] = fn
        return fn

    return deco


def _writers() -> dict[Format, SinkFactory]:
    from . import auto_awq, auto_gptq, auto_round, fake, llm_compressor  # noqa: F401  (writers register themselves)
    from .gguf import pipeline  # noqa: F401

    return WRITERS


def export_dir_name(model_name: str, scheme: QuantScheme, fmt: Format) -> str:
    """``<model>-<scheme>-<format>`` (``<model>-gguf-<mix>``): known before the model loads, so it can be checked."""
    if is_gguf(fmt):
        return f"{model_name}-gguf-{gguf_mix(fmt)}"
    return f"{model_name}-{scheme.short_name()}-{fmt.value}"


@contextmanager
def open_export(data: ExportInput, fmt: Format, target: "str | Path", overwrite: bool = False) -> Iterator[ExportSink]:
    """A sink writing format ``fmt`` into ``target`` while the caller hands it layers; atomic.

    ``target`` must be new, empty, or (with ``overwrite``) a previous signround output
    (``io.check_output_target``). The caller calls ``finish`` inside the block; the directory appears
    (with signround.json and quant_log.json) when the block exits cleanly, and never otherwise.
    """
    writers = _writers()
    if fmt not in writers:
        raise ValueError(f"no writer for format {fmt.value}; available: {', '.join(f.value for f in writers)}")
    target = Path(target)
    with atomic_output_dir(target, overwrite) as tmp:
        yield writers[fmt](data, tmp)
        run = {"format": fmt.value, "source_model": data.source, "settings": data.settings, "plan": data.plan.to_dict()}
        if data.act_max:  # static activation scales, also for formats whose config cannot hold them (fake)
            run["act_max"] = {n: float(v) for n, v in sorted(data.act_max.items())}
        write_run(tmp, run)
        if data.log:
            (tmp / "quant_log.json").write_text(json.dumps(data.log, indent=1, default=str) + "\n")
    logger.info("wrote %s checkpoint to %s", fmt.value, target)


def export_model(data: ExportInput, fmt: Format, target: "str | Path", overwrite: bool = False) -> Path:
    """Write ``data`` (every layer's codes already in ``data.weights``) in format ``fmt`` to ``target``, atomically."""
    with open_export(data, fmt, target, overwrite) as sink:
        sink.add(data.weights)
        sink.finish()
    return Path(target)
