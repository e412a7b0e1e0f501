"""The ``auto_gptq`` format: a GPTQ v1 checkpoint (``quant_method: gptq``), AutoRound reference §5.2.

Read by transformers + optimum + GPTQModel, vLLM and AutoRound's loader. Tensors of a quantized
Linear ``<layer>`` (``K`` = in_features, ``N`` = out_features, ``G = ceil(K / group_size)``):

- ``<layer>.qweight``: (K * bits / 32, N) int32, codes packed along the input dimension
  (``packing.py``: 32/bits codes per word LSB first; 3 bits use GPTQ's cross-word scheme)
- ``<layer>.qzeros``:  (G, N * bits / 32) int32, zero points packed along the output dimension,
  stored as ``zero - 1`` (the v1 convention: every kernel adds the 1 back; 4-bit sym is 0x77777777)
- ``<layer>.scales``:  (G, N) float16 (negative values are normal for full-range sym)
- ``<layer>.g_idx``:   (K,) int32, always the trivial ``i // group_size`` (no act-order)
- ``<layer>.bias``:    (N,) float16, when the layer has a bias

The v1 convention cannot store a zero point of 0 (``0 - 1`` wraps to ``2**bits - 1``, and loaders
that add 1 in the packed word carry into the neighbour). Such a group is stored as the same values
with codes and zero both raised by 1; a group that also uses the top code cannot be, and the writer
stops with the layer and group counts (asym zero points of 0 need format ``auto_round``).

``quantization_config``: ``quant_method gptq``, ``checkpoint_format gptq`` (v1), ``desc_act false``,
bits/group_size/sym of the default scheme, ``lm_head`` when the head is quantized, and GPTQModel's
``dynamic`` for every layer that differs: ``"+:^<name>$": {bits, group_size, sym}`` for another
scheme, ``"-:^<name>$": {}`` for an in-block layer kept in float (first match wins, ``re.match``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from ..plan import QuantPlan
from ..quant.grouping import expand_groups, to_groups
from ..quant.types import QuantizedWeight
from .auto_round import packed_layer_tensors
from .stream import SafetensorsSink, TensorLayout
from ..formats import Format
from .registry import ExportInput, register_writer

__all__ = ["gptq_v1_weight", "gptq_layer_tensors", "gptq_quantization_config", "dynamic_key"]

logger = logging.getLogger(__name__)


def gptq_v1_weight(qw: QuantizedWeight, layer: str) -> QuantizedWeight:
    """The same dequantized values with every zero point >= 1 (what ``zero - 1`` can store), or an error."""
    bad = qw.zero == 0  # (out, G)
    if not bool(bad.any()):
        return qw
    in_f = qw.shape[1]
    bad_cols = expand_groups(bad, qw.group_size, in_f)  # (out, in)
    top = 2**qw.bits - 1
    uses_top = to_groups((qw.codes == top).to(torch.uint8), qw.group_size).amax(-1).reshape(bad.shape)  # (out, G)
    blocked = bad & uses_top.bool()
    n_bad, n_blocked = int(bad.sum()), int(blocked.sum())
    if n_blocked:
        raise ValueError(
            f"auto_gptq: layer {layer} has {n_bad} of {bad.numel()} groups with zero point 0, and {n_blocked} of them "
            f"use the top code {top}, so the GPTQ v1 'zero - 1' convention cannot hold them. Export this layer with "
            f"format auto_round (raw zero points) or quantize it symmetrically."
        )
    logger.info("auto_gptq: %s: %d groups with zero point 0 stored as codes+1, zero 1 (same values)", layer, n_bad)
    return QuantizedWeight(codes=qw.codes + bad_cols.to(torch.uint8), scale=qw.scale, zero=qw.zero + bad.to(torch.uint8),
                           bits=qw.bits, group_size=qw.group_size, sym=qw.sym)


def gptq_layer_tensors(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """qweight/qzeros (zero - 1)/scales plus the trivial g_idx of one layer."""
    tensors = packed_layer_tensors(qw, zero_offset=1)
    tensors["g_idx"] = torch.arange(qw.shape[1], dtype=torch.int32) // qw.group_size  # (K,)
    return tensors


def dynamic_key(sign: str, layer: str) -> str:
    """A GPTQModel ``dynamic`` key matching exactly one layer: ``+:^model\\.layers\\.0\\.mlp\\.up_proj$``."""
    return f"{sign}:^{re.escape(layer)}$"


def _gptq_scheme(scheme) -> dict[str, Any]:
    return {"bits": scheme.bits, "group_size": -1 if scheme.group_size in (-1, 0) else scheme.group_size,
            "sym": scheme.sym}


def gptq_quantization_config(plan: QuantPlan) -> dict[str, Any]:
    default = _gptq_scheme(plan.default)
    dynamic: dict[str, dict] = {}
    lm_head = False
    in_block_float: set[str] = set()
    in_block_quant: set[str] = set()
    for p in plan.layers.values():
        is_head = p.name == plan.lm_head
        if p.block is None and not is_head:
            if p.quantized:
                raise ValueError(f"auto_gptq: GPTQ loaders quantize only layers inside {plan.blocks_prefix} and the "
                                 f"lm_head; {p.name} is outside the blocks. Keep it float or use format auto_round.")
            continue
        local = p.name[len(plan.blocks_prefix) + 1:].split(".", 1)[-1] if p.block is not None else ""  # mlp.up_proj
        if not p.quantized:
            if local:
                in_block_float.add(local)
                dynamic[dynamic_key("-", p.name)] = {}
            continue
        lm_head = lm_head or is_head
        if local:
            in_block_quant.add(local)
        keys = _gptq_scheme(p.scheme)
        if keys != default:
            dynamic[dynamic_key("+", p.name)] = keys
    config: dict[str, Any] = {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        **default,
        "desc_act": False,
        "static_groups": False,
        "true_sequential": False,
        "damp_percent": 0.01,
        "lm_head": lm_head,
        "block_name_to_quantize": plan.blocks_prefix,
        "provider": "signround",
    }
    if in_block_float:  # optimum builds QuantLinears only for these names (dynamic then skips per block)
        config["modules_in_block_to_quantize"] = [sorted(in_block_quant)]
    if dynamic:
        config["dynamic"] = dynamic
    if dynamic or lm_head:
        logger.warning("auto_gptq: this checkpoint has per-layer overrides (%d dynamic entries%s): GPTQModel.load, vLLM and "
                       "signround honour them; transformers + optimum 2.3 give every in-block layer the global scheme "
                       "and fail to load it", len(dynamic), ", quantized lm_head" if lm_head else "")
    return config


@register_writer(Format.AUTO_GPTQ)
def auto_gptq_sink(data: ExportInput, folder: Path) -> SafetensorsSink:
    qconfig = gptq_quantization_config(data.plan)  # checks the plan before any layer is written
    layout = TensorLayout(lambda plan, qw, dtype: gptq_layer_tensors(gptq_v1_weight(qw, plan.name)),
                          lambda plan, settings: qconfig)
    return SafetensorsSink(data, folder, layout)
