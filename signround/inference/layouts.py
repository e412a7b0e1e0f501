"""On-disk tensor layouts of packed integer layers, and their decoders to ``QuantizedWeight``.

A layout is how one Linear's codes, scales and zero points sit in tensors; several checkpoint kinds
share one (an AutoRound ``auto_round:auto_gptq`` file and a GPTQ v1 file are the same bytes). The
writers document each layout: ``export/auto_gptq.py`` (``gptq``), ``export/auto_round.py``
(``gptq_raw_zero``: the same tensors with zero points stored as they are) and ``export/auto_awq.py``
(``awq_gemm``). Decoders check every shape against the others and name the file and tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch

from ..formats.awq_packing import unpack_awq
from ..formats.packing import unpack_bits
from ..errors import BadInputError
from ..quant.grouping import num_groups
from ..quant.types import QuantizedWeight

__all__ = ["Layout", "LayerSpec", "LayoutSpec", "LAYOUTS", "CheckpointError", "decode_layer", "check_finite",
           "PACKED_DTYPE"]


class CheckpointError(BadInputError):
    """A checkpoint that cannot be read as it claims to be; the message names the file and tensor."""


class Layout(str, Enum):
    """Tensor layouts of a packed layer (values reach logs and the backend table; never change them)."""

    GPTQ = "gptq"  # qweight along the input dim, qzeros along the output dim holding zero - 1 (v1)
    GPTQ_RAW_ZERO = "gptq_raw_zero"  # the same tensors, zero points stored as they are (GPTQ v2, auto_round asym)
    AWQ_GEMM = "awq_gemm"  # qweight/qzeros packed along the output dim in AWQ's nibble order, raw zeros
    AUTO_ROUND_FP = "auto_round_fp"  # FP4/FP8 codes + E8M0/FP8/fp32 scales: decoded by auto_round_fp.py
    COMPRESSED_TENSORS = "compressed_tensors"  # per-layer compressed-tensors formats (inference/compressed_tensors.py)


@dataclass(frozen=True)
class LayerSpec:
    """What the config says about one packed layer (group_size <= 0: one group per row)."""

    bits: int
    group_size: int
    sym: bool


Tensors = dict[str, torch.Tensor]


PACKED_DTYPE = torch.int32  # qweight and qzeros words, in every layout


def check_finite(t: torch.Tensor, at: str) -> None:
    """``at`` ("file: tensor") holds only finite values; one pass over the tensor."""
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise CheckpointError(f"{at} holds {bad} NaN/inf value(s) of {t.numel()} (damaged or badly exported file)")


def _tensor(name: str, key: str, t: Tensors, where: dict[str, str]) -> tuple[torch.Tensor, str]:
    """One packed-layer tensor, its dtype checked (int32 words, finite floating scales), and "file: tensor"."""
    full = f"{name}.{key}"
    if full not in t:
        raise CheckpointError(f"{where.get(name + '.qweight', '?')}: quantized layer {name} lacks {full}")
    tensor, at = t[full], f"{where[full]}: {full}"
    if key in ("qweight", "qzeros") and tensor.dtype != PACKED_DTYPE:
        raise CheckpointError(f"{at} is {tensor.dtype}; packed {key} words must be {PACKED_DTYPE} "
                              f"(a converted copy would decode to different codes)")
    if key == "scales":
        if not tensor.is_floating_point():
            raise CheckpointError(f"{at} is {tensor.dtype}; scales must be floating point")
        check_finite(tensor, at)
    return tensor, at


def _check_g_idx(name: str, t: Tensors, where: dict[str, str], in_f: int, group_size: int) -> None:
    gidx = t.get(f"{name}.g_idx")
    if gidx is None:
        return
    if gidx.is_floating_point() or gidx.dtype == torch.bool:
        raise CheckpointError(f"{where[name + '.g_idx']}: {name}.g_idx is {gidx.dtype}; it must hold integer group ids")
    if group_size <= 0:
        return
    trivial = torch.arange(gidx.numel()) // group_size
    if gidx.numel() < in_f or not torch.equal(gidx.to(torch.int64).cpu()[:in_f], trivial[:in_f]):
        raise CheckpointError(
            f"{where[name + '.g_idx']}: {name}.g_idx is not the trivial i // {group_size}: an act-order (desc_act) "
            f"checkpoint without static groups, which signround cannot load or convert (re-quantize with desc_act=False "
            f"or static_groups=True)")


def _decode_gptq(name: str, t: Tensors, where: dict[str, str], spec: LayerSpec, in_features: int | None,
                 zero_offset: int) -> QuantizedWeight:
    qweight, qw_at = _tensor(name, "qweight", t, where)
    qzeros, qz_at = _tensor(name, "qzeros", t, where)
    scales, sc_at = _tensor(name, "scales", t, where)
    if qweight.dim() != 2 or qzeros.dim() != 2 or scales.dim() != 2:
        raise CheckpointError(f"{qw_at}: qweight/qzeros/scales must be 2-D, got {tuple(qweight.shape)}, "
                              f"{tuple(qzeros.shape)}, {tuple(scales.shape)}")
    n_groups, out_f = scales.shape
    rows = qweight.shape[0] * 32 // spec.bits
    if qweight.shape[1] != out_f:
        raise CheckpointError(f"{qw_at} has {qweight.shape[1]} columns, but {name}.scales says out_features={out_f}")
    # qweight may hold padded rows (a last group filled with zeros); the model's in_features says where to cut.
    in_f = in_features if in_features is not None else (rows if spec.group_size <= 0 else min(rows, n_groups * spec.group_size))
    if in_f > rows:
        raise CheckpointError(f"{qw_at} holds {rows} input rows, the model expects {in_f}")
    if spec.group_size > 0 and num_groups(spec.group_size, in_f) != n_groups:
        raise CheckpointError(f"{sc_at} has {n_groups} groups, but {in_f} input rows at group_size {spec.group_size} "
                              f"need {num_groups(spec.group_size, in_f)}")
    if spec.group_size <= 0 and n_groups != 1:
        raise CheckpointError(f"{sc_at} has {n_groups} groups, but the config says one group per row")
    expected_z = (n_groups, out_f * spec.bits // 32)
    if tuple(qzeros.shape) != expected_z:
        raise CheckpointError(f"{qz_at} has shape {tuple(qzeros.shape)}, expected {expected_z} for "
                              f"{spec.bits}-bit zeros of {out_f} outputs")
    _check_g_idx(name, t, where, in_f, spec.group_size)
    codes = unpack_bits(qweight, spec.bits, dim=0, length=in_f).t().contiguous()  # (out, in)
    zeros = unpack_bits(qzeros, spec.bits, dim=1, length=out_f).t().to(torch.int16) + zero_offset  # (out, G)
    gs = in_f if spec.group_size <= 0 else spec.group_size
    return QuantizedWeight(codes=codes, scale=scales.t().float().contiguous(), zero=zeros.clamp(0, 255).to(torch.uint8),
                           bits=spec.bits, group_size=gs, sym=spec.sym)


def _decode_awq(name: str, t: Tensors, where: dict[str, str], spec: LayerSpec, in_features: int | None,
                zero_offset: int) -> QuantizedWeight:
    if spec.bits != 4:
        raise CheckpointError(f"{where[name + '.qweight']}: AWQ layer {name} says {spec.bits} bits; the GEMM layout holds 4")
    qweight, qw_at = _tensor(name, "qweight", t, where)
    qzeros, qz_at = _tensor(name, "qzeros", t, where)
    scales, sc_at = _tensor(name, "scales", t, where)
    n_groups, out_f = scales.shape
    in_f = qweight.shape[0] if in_features is None else in_features
    if tuple(qweight.shape) != (in_f, out_f // 8) or out_f % 8:
        raise CheckpointError(f"{qw_at} has shape {tuple(qweight.shape)}, expected ({in_f}, {out_f // 8}) for "
                              f"{in_f} inputs and the {out_f} outputs of {name}.scales")
    gs = in_f if spec.group_size <= 0 else spec.group_size
    if in_f % gs or n_groups != in_f // gs:
        raise CheckpointError(f"{sc_at} has {n_groups} groups, but {in_f} inputs at group_size {gs} need "
                              f"{in_f / gs:g} (AWQ needs group_size to divide in_features)")
    if tuple(qzeros.shape) != (n_groups, out_f // 8):
        raise CheckpointError(f"{qz_at} has shape {tuple(qzeros.shape)}, expected ({n_groups}, {out_f // 8})")
    codes = unpack_awq(qweight).t().contiguous()  # (out, in)
    zeros = unpack_awq(qzeros).t().contiguous()  # (out, G)
    return QuantizedWeight(codes=codes, scale=scales.t().float().contiguous(), zero=zeros + zero_offset,
                           bits=4, group_size=gs, sym=spec.sym)


Decoder = Callable[[str, Tensors, dict, LayerSpec, "int | None", int], QuantizedWeight]


@dataclass(frozen=True)
class LayoutSpec:
    description: str
    zero_offset: int  # added to every stored zero point
    tensors: tuple[str, ...]  # per-layer tensor names, besides an optional bias
    decode: Decoder


LAYOUTS: dict[Layout, LayoutSpec] = {
    Layout.GPTQ: LayoutSpec("GPTQ v1: int32 qweight (in*bits/32, out), qzeros (G, out*bits/32) holding zero - 1",
                            1, ("qweight", "qzeros", "scales", "g_idx"), _decode_gptq),
    Layout.GPTQ_RAW_ZERO: LayoutSpec("GPTQ tensors with raw zero points (GPTQ v2, auto_round asym)",
                                     0, ("qweight", "qzeros", "scales", "g_idx"), _decode_gptq),
    Layout.AWQ_GEMM: LayoutSpec("AWQ GEMM: int32 qweight (in, out/8), qzeros (G, out/8) in nibble order 0,2,4,6,1,3,5,7",
                                0, ("qweight", "qzeros", "scales"), _decode_awq),
}


def decode_layer(layout: Layout, name: str, tensors: Tensors, where: dict[str, str], spec: LayerSpec,
                 in_features: int | None = None) -> QuantizedWeight:
    """Decode the packed tensors of layer ``name`` (``where`` maps tensor name -> file, for errors)."""
    entry = LAYOUTS[layout]
    return entry.decode(name, tensors, where, spec, in_features, entry.zero_offset)
