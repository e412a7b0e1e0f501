"""The ``auto_round`` format (``quant_method: auto-round``), AutoRound reference §5.1.

Tensors of a quantized Linear ``<layer>`` (``K`` = in_features, ``N`` = out_features,
``G = ceil(K / group_size)``):

- ``<layer>.qweight``: (K * bits / 32, N) int32, codes packed along the input dimension (``packing.py``)
- ``<layer>.qzeros``:  (G, N * bits / 32) int32, zero points packed along the output dimension;
  stored as ``zero - 1`` (GPTQ v1) for ``packing_format = auto_round:auto_gptq``, raw for ``auto_round``
- ``<layer>.scales``:  (G, N) float16 (negative values are normal for full-range sym)
- ``<layer>.bias``:    (N,) float16, when the layer has a bias

All-sym checkpoints use ``auto_round:auto_gptq`` (read by every GPTQ kernel); a checkpoint with any
asym layer uses ``auto_round``, because the v1 ``zero - 1`` convention cannot store a zero point of 0.
Layers whose scheme differs from the global one are listed in ``extra_config``.
FP/MX layers (MXFP4/8, NVFP4, FP8, MXINT4) have their own tensors and keys: ``auto_round_fp.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..plan import QuantPlan
from ..quant.types import QuantizedWeight
from ..formats import Format
from .stream import SafetensorsSink, TensorLayout
from ..formats.packing import pack_bits
from .registry import ExportInput, register_writer
from .auto_round_fp import act_keys, fp_config_extras, fp_layer_tensors, fp_packing, fp_scheme_keys, is_fp_scheme

__all__ = ["packed_layer_tensors", "packed_layout", "packed_state_dict", "auto_round_packing", "auto_round_quantization_config", "GPTQ_PACKING", "PLAIN_PACKING"]

GPTQ_PACKING = "auto_round:auto_gptq"
PLAIN_PACKING = "auto_round"


def packed_layer_tensors(qw: QuantizedWeight, zero_offset: int) -> dict[str, torch.Tensor]:
    """qweight/qzeros/scales of one layer; ``zero_offset`` is 1 for the GPTQ v1 ``zero - 1`` convention."""
    mask = 2**qw.bits - 1
    qweight = pack_bits(qw.codes.t().contiguous(), qw.bits, dim=0)  # (K*bits/32, N)
    zeros = (qw.zero.t().to(torch.int64) - zero_offset) & mask  # (G, N)
    qzeros = pack_bits(zeros, qw.bits, dim=1)  # (G, N*bits/32)
    scales = qw.scale.t().contiguous().to(torch.float16)  # (G, N)
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales}


def packed_state_dict(tensors: dict[str, torch.Tensor], weights: dict[str, QuantizedWeight],
                      layer_tensors: Callable[[QuantizedWeight], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``tensors`` with each quantized layer's ``.weight`` replaced by its packed tensors and its bias in fp16.

    The in-memory form of ``packed_layout`` (same order: float tensors, then each layer's packed tensors),
    for ``convert``, whose inputs are already whole checkpoints.
    """
    out = dict(tensors)
    for name, qw in weights.items():
        out.pop(f"{name}.weight", None)
        for key, t in layer_tensors(qw).items():
            out[f"{name}.{key}"] = t
        if f"{name}.bias" in out:
            out[f"{name}.bias"] = out[f"{name}.bias"].to(torch.float16)
    return out


def packed_layout(layer_tensors: Callable[[QuantizedWeight], dict[str, torch.Tensor]],
                  quantization_config: Callable[[QuantPlan, dict[str, Any]], dict[str, Any]]) -> TensorLayout:
    """A packed format: float tensors first (a quantized layer's bias in fp16), then each layer's packed tensors."""
    return TensorLayout(lambda plan, qw, dtype: layer_tensors(qw), quantization_config)


def _scheme_keys(scheme, with_act: bool = False) -> dict[str, Any]:
    if with_act:  # a checkpoint with FP layers or quantized inputs says every layer's activation scheme
        return {**_scheme_keys(scheme), **act_keys(scheme)}
    if is_fp_scheme(scheme):
        return fp_scheme_keys(scheme)
    if not scheme.is_quantized:
        return {"bits": 16, "data_type": "float"}
    gs = -1 if scheme.group_size == 0 else scheme.group_size
    return {"bits": scheme.bits, "group_size": gs, "sym": scheme.sym, "data_type": scheme.data_type}


def auto_round_quantization_config(plan: QuantPlan, packing: str, settings: dict[str, Any]) -> dict[str, Any]:
    with_act = any(is_fp_scheme(p.scheme) or p.scheme.quantizes_activations for p in plan.quantized())
    default = _scheme_keys(plan.default, with_act)
    extra: dict[str, dict] = {}
    for p in plan.layers.values():
        keys = _scheme_keys(p.scheme, with_act)
        if p.block is None:
            if p.quantized:
                extra[p.name] = keys  # layers outside the blocks carry every key
            continue
        diff = {k: v for k, v in keys.items() if default.get(k) != v}
        if diff:
            extra[p.name] = diff
    config: dict[str, Any] = {
        "quant_method": "auto-round",
        "packing_format": packing,
        **default,
        "block_name_to_quantize": plan.blocks_prefix,
        "provider": "signround",
        **fp_config_extras(plan.default),
    }
    if extra:
        config["extra_config"] = extra
    config.update({k: v for k, v in settings.items() if v is not None})
    return config


def auto_round_packing(plan: QuantPlan) -> tuple[str, int]:
    """The packing_format for a plan and the offset subtracted from stored zero points."""
    if is_fp_scheme(plan.default):  # auto-round's FP packing; int layers beside FP ones keep raw zero points
        return fp_packing(plan.default), 0
    if all(p.scheme.sym for p in plan.quantized()):
        return GPTQ_PACKING, 1
    return PLAIN_PACKING, 0


@register_writer(Format.AUTO_ROUND)
def auto_round_sink(data: ExportInput, folder: Path) -> SafetensorsSink:
    packing, offset = auto_round_packing(data.plan)
    config = lambda plan, settings: auto_round_quantization_config(plan, packing, settings)  # noqa: E731

    def layer_tensors(p, qw, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if is_fp_scheme(p.scheme):
            return fp_layer_tensors(p.name, p.scheme, qw, data.act_max.get(p.name))
        return packed_layer_tensors(qw, offset)

    return SafetensorsSink(data, folder, TensorLayout(layer_tensors, config))
