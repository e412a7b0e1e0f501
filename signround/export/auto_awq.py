"""The ``auto_awq`` format: an AWQ GEMM checkpoint (``quant_method: awq``, ``version: gemm``), AutoRound reference §5.3.

Read by transformers + GPTQModel (``TorchAtenAwqLinear`` on CPU), vLLM and AutoAWQ. 4-bit only.
Tensors of a quantized Linear ``<layer>`` (``K`` = in_features, ``N`` = out_features, ``G = K / group_size``):

- ``<layer>.qweight``: (K, N / 8) int32, codes packed along the **output** dimension, 8 per word
- ``<layer>.qzeros``:  (G, N / 8) int32, raw zero points (no ``- 1``), packed the same way
- ``<layer>.scales``:  (G, N) float16
- ``<layer>.bias``:    (N,) float16, when the layer has a bias

Inside a word, nibble ``k`` holds output column ``AWQ_ORDER[k]`` of its group of 8 columns (the
diagram is in ``formats/awq_packing.py``, shared with the reader).

Byte formula per layer: 4 * (K * N / 8) + 4 * (G * N / 8) + 2 * (G * N) (+ 2 * N bias).

``quantization_config``: ``bits 4``, one ``group_size`` for every layer (AWQ has no per-layer
overrides), ``zero_point`` (false when every layer is sym: then every stored zero is 8 and loaders may
use the fixed offset 8 instead), ``modules_to_not_convert`` (every Linear kept in float).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..plan import QuantPlan
from ..quant.types import QuantizedWeight
from ..formats import Format
from ..formats.awq_packing import pack_awq
from .auto_round import packed_layout
from .stream import SafetensorsSink
from .registry import ExportInput, register_writer

__all__ = ["awq_layer_tensors", "awq_quantization_config"]

def awq_layer_tensors(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    if qw.bits != 4:
        raise ValueError(f"AWQ holds 4-bit weights only, got {qw.bits} bits")
    return {
        "qweight": pack_awq(qw.codes.t().contiguous()),  # (K, N/8)
        "qzeros": pack_awq(qw.zero.t().contiguous()),  # (G, N/8), raw zero points
        "scales": qw.scale.t().contiguous().to(torch.float16),  # (G, N)
    }


def awq_quantization_config(plan: QuantPlan) -> dict[str, Any]:
    quantized = plan.quantized()
    if not quantized:
        raise ValueError("auto_awq: the plan quantizes no layer")
    group_sizes = {p.scheme.group_size for p in quantized}
    if len(group_sizes) > 1:
        detail = ", ".join(f"{p.name}={p.scheme.group_size}" for p in quantized[:6])
        raise ValueError(f"auto_awq: AWQ has one group_size for the whole model, got {sorted(group_sizes)} ({detail} ...); "
                         f"give every layer the same group_size or use format auto_round")
    group_size = group_sizes.pop()
    if group_size <= 0:
        raise ValueError(f"auto_awq: AWQ needs a positive group_size, got {group_size} (per-channel/per-tensor); "
                         f"use a group size such as 128, or format auto_gptq / auto_round")
    return {
        "quant_method": "awq",
        "version": "gemm",
        "bits": 4,
        "group_size": group_size,
        "zero_point": any(not p.scheme.sym for p in quantized),
        "modules_to_not_convert": sorted(p.name for p in plan.layers.values() if not p.quantized),
        "provider": "signround",
    }


@register_writer(Format.AUTO_AWQ)
def auto_awq_sink(data: ExportInput, folder: Path) -> SafetensorsSink:
    qconfig = awq_quantization_config(data.plan)  # checks the plan before any layer is written
    return SafetensorsSink(data, folder, packed_layout(awq_layer_tensors, lambda plan, settings: qconfig))
