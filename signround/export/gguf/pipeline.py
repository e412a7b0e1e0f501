"""The GGUF formats of the pipeline: one registered writer per llama.cpp mix (``gguf:q4_k_m`` ...).

The block loop has already quantized every Linear the plan gives a ggml type (``GGUFQuantized``
codes in ``ExportInput.weights``, tuned or optimised RTN); this writer hands them to
``write_gguf`` unchanged and lets it quantize the tensors that are no planned Linear (token_embd,
and the output when it is tied to it) with the importance matrix the block loop collected for the
lm_head (llama.cpp's imatrix holds ``token_embd.weight`` for tied models for the same reason).
Linears the plan keeps in float are written as F16 (or the float type of a float mix).

Output: ``<folder>/<model>-<MIX>.gguf``, one file, written to a temporary name and renamed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import torch

from ...formats import Format, gguf_mix, is_gguf
from ...formats.gguf_mixes import mix_spec
from ...formats.gguf_tensors import hf_tensor_types
from ...model.arch import tied_embeddings
from ...quant.gguf import GGMLType, GGUFQuantized
from ..registry import ExportInput, register_writer
from .writer import write_gguf

__all__ = ["write_gguf_checkpoint", "gguf_file_name", "find_gguf_file"]

logger = logging.getLogger(__name__)

_FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def gguf_file_name(model_name: str, mix: str) -> str:
    return f"{model_name}-{mix.upper()}.gguf"


def find_gguf_file(path: "str | Path") -> Path:
    """The ``.gguf`` file at ``path``, or the only one inside the directory ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    files = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .gguf file at {path}, found {[f.name for f in files] or 'none'}")
    return files[0]


def _model_name(data: ExportInput) -> str:
    source = Path(data.source or getattr(data.model.config, "_name_or_path", "") or "model")
    return (source.stem if source.suffix == ".gguf" else source.name) or "model"


def _embedding_module(model: torch.nn.Module) -> str | None:
    """The input embedding's module name when the lm_head is tied to it (its matmul then runs on token_embd)."""
    emb = model.get_input_embeddings()
    if emb is None or not tied_embeddings(model):
        return None
    return next((n for n, m in model.named_modules() if m is emb), None)


def write_gguf_checkpoint(data: ExportInput, folder: Path, mix: str) -> Path:
    """Write ``data`` as one GGUF file of ``mix`` in ``folder``; returns the file."""
    model, plan = data.model, data.plan
    spec = mix_spec(mix)
    types = hf_tensor_types(model, mix, has_imatrix=bool(data.imatrix))
    tensor_types: dict[str, GGMLType] = {}
    for hf_name, (gguf_name, choice) in types.items():
        layer = plan.layers.get(hf_name.removesuffix(".weight")) if hf_name.endswith(".weight") else None
        if layer is None:
            tensor_types[gguf_name] = choice.qtype
        elif layer.quantized:
            if layer.scheme.data_type != "gguf":
                raise ValueError(f"format gguf:{mix} stores ggml types; layer {layer.name} is planned as "
                                 f"{layer.scheme.short_name()} (plan the run for the GGUF format)")
            tensor_types[gguf_name] = GGMLType[layer.scheme.ggml_type]
        else:
            tensor_types[gguf_name] = choice.qtype if choice.qtype in _FLOAT_TYPES else GGMLType.F16
    quantized: dict[str, GGUFQuantized] = {}
    for name, w in data.weights.items():
        if not isinstance(w, GGUFQuantized):
            raise TypeError(f"format gguf:{mix}: layer {name} holds {type(w).__name__}, not GGUFQuantized codes")
        quantized[f"{name}.weight"] = w
    imatrix = dict(data.imatrix)
    emb = _embedding_module(model)
    if emb is not None and plan.lm_head in imatrix:
        imatrix[emb] = imatrix[plan.lm_head]  # the tied output matmul runs on token_embd
    if mix == "q2_k_s" and not imatrix:
        logger.warning("q2_k_s without an importance matrix: llama.cpp refuses this mix without one (quality suffers)")
    name = _model_name(data)
    return write_gguf(
        model, data.tokenizer, folder / gguf_file_name(name, mix), tensor_types, quantized,
        file_type=int(spec.file_type), imatrix=imatrix, start=data.start, name=name, read=data.tensors.read,
    )


class GGUFSink:
    """A GGUF file is written whole at ``finish``: the layers' codes are kept until then (not streamed out),
    the float tensors are read from the model's source one at a time."""

    def __init__(self, data: ExportInput, folder: Path, mix: str) -> None:
        self.data, self.folder, self.mix = data, folder, mix
        self.weights: dict = {}

    def add(self, weights) -> None:
        self.weights.update(weights)

    def finish(self) -> None:
        write_gguf_checkpoint(dataclasses.replace(self.data, weights=self.weights), self.folder, self.mix)


for _fmt in Format:
    if is_gguf(_fmt):
        register_writer(_fmt)(functools.partial(GGUFSink, mix=gguf_mix(_fmt)))
