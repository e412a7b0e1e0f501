"""Safetensors checkpoints written while the block loop runs: each layer's tensors leave memory as it finishes.

A format that stores a model as safetensors differs from another only in a ``TensorLayout``: the
tensors of one quantized layer, the dtype of that layer's bias, the ``quantization_config``. The
``SafetensorsSink`` does the rest for every such format, the same way for a model held in memory and
for one streamed block by block:

- float tensors (embeddings, norms, float layers) come from the model's ``WeightSource``: copied byte
  for byte when their dtype is kept, so a 1 GB embedding never has to be in memory;
- a quantized layer's tensors are written when ``add`` hands over its codes, and dropped;
- tensors go out in a fixed order (the layout's), so shard boundaries and file bytes are the same
  whether the model was streamed or not, and equal to what one ``save_file`` per shard would write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from ..model.arch import tied_embeddings
from ..model.weights import WeightSource
from ..plan import LayerPlan, QuantPlan
from ..quant.types import QuantizedWeight
from .io import save_model_files
from .shards import ShardedSafetensorsWriter

if TYPE_CHECKING:
    from .registry import ExportInput

__all__ = ["TensorLayout", "SafetensorsSink", "export_tensor_names", "float_dtype_of"]


@dataclass(frozen=True)
class TensorLayout:
    """What one safetensors format does with a quantized layer; everything else is shared."""

    # (layer plan, codes, the model's float dtype) -> {suffix: tensor}, e.g. {"qweight": ..., "scales": ...}
    layer_tensors: Callable[[LayerPlan, QuantizedWeight, torch.dtype], dict[str, torch.Tensor]]
    # (plan, settings) -> the config's quantization_config, or None (fake: a plain float checkpoint)
    quantization_config: Callable[[QuantPlan, dict[str, Any]], "dict[str, Any] | None"]
    quantized_bias_dtype: torch.dtype | None = torch.float16  # None: a quantized layer's bias keeps its dtype
    # True: every float tensor first, then the packed layers in plan order (the packed formats' files);
    # False: the model's own order with each quantized weight in its place (fake)
    floats_first: bool = True


def export_tensor_names(model: torch.nn.Module) -> list[str]:
    """The model's tensor names in state_dict order, each tensor once (a tied lm_head is not stored)."""
    tied_out = None
    if tied_embeddings(model) and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
        tied_out = next((n for n, m in model.named_modules() if m is head), None) if head is not None else None
    seen: set[int] = set()
    names = []
    for name, t in model.state_dict(keep_vars=True).items():
        if tied_out is not None and name == f"{tied_out}.weight":
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        names.append(name)
    return names


def float_dtype_of(model: torch.nn.Module) -> torch.dtype:
    """The dtype the checkpoint's float tensors are written in: the model's (skeleton's) first float tensor."""
    return next((t.dtype for t in model.state_dict(keep_vars=True).values() if t.is_floating_point()), torch.float32)


class SafetensorsSink:
    """One output checkpoint of a safetensors format, filled as layers finish; ``finish`` adds the config."""

    def __init__(self, data: "ExportInput", folder: Path, layout: TensorLayout) -> None:
        self.data, self.folder, self.layout = data, folder, layout
        model, plan = data.model, data.plan
        self.tensors: WeightSource = data.tensors
        self.dtype = float_dtype_of(model)
        self.params = dict(model.state_dict(keep_vars=True))
        quantized = [p for p in plan.quantized()]
        self._layers = {p.name: p for p in quantized}
        self._biases = {f"{p.name}.bias" for p in quantized}
        names = export_tensor_names(model)
        weight_of = {f"{p.name}.weight": p.name for p in quantized}
        missing = [w for w in weight_of if w not in names]
        if missing:
            raise ValueError(f"planned layers without a weight in the model: {', '.join(missing[:6])}")
        if layout.floats_first:
            self._order = [("float", n) for n in names if n not in weight_of] + [("layer", p.name) for p in quantized]
        else:
            self._order = [("layer", weight_of[n]) if n in weight_of else ("float", n) for n in names]
        self._next = 0
        self._ready: dict[str, QuantizedWeight] = {}
        self._writer = ShardedSafetensorsWriter(folder, data.max_shard_bytes)
        self._flush()

    def add(self, weights: Mapping[str, QuantizedWeight]) -> None:
        """The codes of finished layers: written as soon as every tensor before them in the order is out."""
        for name, qw in weights.items():
            if name in self._layers:
                self._ready[name] = qw
        self._flush()

    def _flush(self) -> None:
        while self._next < len(self._order):
            kind, name = self._order[self._next]
            if kind == "layer":
                qw = self._ready.pop(name, None)
                if qw is None:
                    return
                dtype = self.params[f"{name}.weight"].dtype
                for suffix, t in self.layout.layer_tensors(self._layers[name], qw, dtype).items():
                    self._writer.add(f"{name}.{suffix}", t)
            else:
                self._write_float(name)
            self._next += 1

    def _write_float(self, name: str) -> None:
        """Copied byte for byte from the source when the dtype is kept; read and cast otherwise."""
        want = self.params[name].dtype
        if name in self._biases and self.layout.quantized_bias_dtype is not None:
            want = self.layout.quantized_bias_dtype
        info = self.tensors.info(name)
        if info.dtype == want:
            self._writer.add_raw(name, info.dtype, tuple(info.shape),
                                 lambda out, n=name: self.tensors.copy_to(n, out))
        else:
            self._writer.add(name, self.tensors.read(name).to(want))

    def finish(self) -> None:
        """Every layer must have arrived; closes the shards and writes config.json and the tokenizer."""
        if self._next < len(self._order):
            kind, name = self._order[self._next]
            raise ValueError(f"the checkpoint is incomplete: {kind} {name} was never handed over")
        self._writer.close()
        qconfig = self.layout.quantization_config(self.data.plan, self.data.settings)
        extra = {} if qconfig is None else {"quantization_config": qconfig}
        save_model_files(self.data.model, self.data.tokenizer, self.folder, extra, dtype=self.dtype)

