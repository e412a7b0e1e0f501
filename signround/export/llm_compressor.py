"""The ``llm_compressor`` format: a compressed-tensors checkpoint (``quant_method: compressed-tensors``), reference §5.4.

Tensor layouts per compressed-tensors format are in ``formats/ct_layout.py``. The ``quantization_config``:

- ``config_groups``: one group per distinct scheme (weights and input activations args, its own ``format``).
  When every quantized layer shares one scheme and no Linear is left out, the group targets ``Linear``;
  otherwise each group names its layers exactly, so no loader can attach a scheme to the wrong layer;
- ``ignore``: every Linear left in float, the lm_head included (never an empty list while something is float:
  transformers would then quantize that layer from uninitialised scales and give NaN logits, the auto-round
  0.16.1 FP8_STATIC bug of real-loaders §3);
- ``format``: the groups' format, or ``mixed-precision`` when they differ; ``quantization_status: compressed``.

A quantized layer's bias keeps the model's dtype (compressed-tensors leaves biases alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..formats import Format
from ..formats import ct_layout as ct
from ..plan import LayerPlan, QuantPlan, is_linear
from .registry import ExportInput, register_writer
from .stream import SafetensorsSink, TensorLayout

__all__ = ["llm_compressor_config", "llm_compressor_layout", "float_linears"]


def float_linears(model: torch.nn.Module, plan: QuantPlan) -> list[str]:
    """Every Linear of ``model`` that the plan leaves in float (what ``ignore`` must name), in module order."""
    quantized = {p.name for p in plan.quantized()}
    return [n for n, m in model.named_modules() if is_linear(m) and n not in quantized]


def _group(scheme, targets: list[str]) -> dict[str, Any]:
    return {"targets": targets, "weights": ct.weight_args(scheme), "input_activations": ct.input_args(scheme),
            "output_activations": None, "format": ct.ct_format(scheme)}


def llm_compressor_config(plan: QuantPlan, ignore: list[str]) -> dict[str, Any]:
    """The ``quantization_config`` of a plan (``ignore``: the float Linears, from ``float_linears``)."""
    by_scheme: dict[Any, list[str]] = {}
    for p in plan.quantized():
        by_scheme.setdefault(p.scheme, []).append(p.name)
    if not by_scheme:
        raise ValueError("llm_compressor: the plan quantizes no layer")
    exact = len(by_scheme) > 1 or bool(ignore)
    groups = {f"group_{i}": _group(s, names if exact else ["Linear"]) for i, (s, names) in enumerate(by_scheme.items())}
    formats = {g["format"] for g in groups.values()}
    return {
        "quant_method": ct.QUANT_METHOD,
        "format": formats.pop() if len(formats) == 1 else ct.MIXED,
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "provider": "signround",
    }


def _check_plan(plan: QuantPlan) -> None:
    """What the support matrix cannot see: conv1d layers and activation schemes compressed-tensors cannot store."""
    for p in plan.quantized():
        if p.conv1d:
            raise ValueError(f"llm_compressor: layer {p.name} is a transposed Conv1D (GPT-2 style); compressed-tensors "
                             f"quantizes nn.Linear only: use format auto_round")
        try:
            ct.weight_args(p.scheme)
            ct.input_args(p.scheme)
        except ValueError as e:
            raise ValueError(f"llm_compressor: layer {p.name}: {e}") from None


def llm_compressor_layout(data: ExportInput) -> TensorLayout:
    """The layout of one export; static activation scales come from ``data.act_max`` as layers are written."""
    ignore = float_linears(data.model, data.plan)
    _check_plan(data.plan)

    def tensors(p: LayerPlan, result, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        out = ct.layer_tensors(p.scheme, result, dtype)
        if p.scheme.quantizes_activations and not p.scheme.act_dynamic:
            if p.name not in data.act_max:
                raise ValueError(f"llm_compressor: layer {p.name} has static {p.scheme.act_dtype} activations but no "
                                 f"calibrated act_max (input_scale cannot be written)")
            out.update(ct.static_input_tensors(p.scheme, data.act_max[p.name]))
        return out

    return TensorLayout(tensors, lambda plan, settings: llm_compressor_config(plan, ignore), quantized_bias_dtype=None)


@register_writer(Format.LLM_COMPRESSOR)
def llm_compressor_sink(data: ExportInput, folder: Path) -> SafetensorsSink:
    return SafetensorsSink(data, folder, llm_compressor_layout(data))
