"""compressed-tensors (``quant_method: compressed-tensors``) as data: formats, config arguments, tensor layouts.

Facts from compressed-tensors 0.20.1 (``compressors/``, ``quantization/quant_args.py``); AutoRound reference §5.4.
Shared by the writer (``export/llm_compressor.py``) and the reader (``inference/compressed_tensors.py``), so the
two cannot disagree. Tensors of a quantized Linear ``<layer>`` (``N`` out, ``K`` in features):

- ``pack-quantized`` (int, weights only): ``weight_packed`` int32 (N, ceil(K*bits/32)), the signed
  ``q + 2**(bits-1)`` (= our unsigned code) as one little-endian bit stream per row (32 codes in ``bits``
  words); ``weight_scale`` (N, G); ``weight_shape`` int64 [N, K]. (Asym adds ``weight_zero_point`` int32
  (ceil(N*bits/32), G), packed along the output dim; read, never written: see ``formats/support.py``.)
- ``int-quantized`` (int with int activations): ``weight`` int8 (N, K) = code - 2**(bits-1); ``weight_scale``
  (N, G) (asym: ``weight_zero_point`` int8 (N, G) = zero - 2**(bits-1)).
- ``float-quantized`` (FP8): ``weight`` float8_e4m3fn (N, K); ``weight_scale`` fp32: (1,) per tensor, (N, 1)
  per channel, (N, G) per group, (ceil(N/r), ceil(K/c)) per r x c block.
- ``mxfp8-quantized``: ``weight`` float8_e4m3fn (N, K); ``weight_scale`` uint8 E8M0 (N, K/32).
- ``mxfp4-pack-quantized``: ``weight_packed`` uint8 (N, K/2), element 2k in the low nibble; ``weight_scale``
  uint8 E8M0 (N, K/32).
- ``nvfp4-pack-quantized``: ``weight_packed`` as MXFP4; ``weight_scale`` float8_e4m3fn (N, K/16);
  ``weight_global_scale`` fp32 (1,).

Dequantization (compressed-tensors ``_dequantize``): ``w = (q - zp) * scale / global_scale``; a negative int scale
(our full-range sym) is multiplied like any other, so it reproduces our weights exactly. Static activations add
``input_scale`` fp32 (1,) (FP8: ``act_max / 448``) or ``input_global_scale`` fp32 (1,) (NVFP4: ``448 * 6 / act_max``).
Int per-tensor weights are written per channel (the same numbers; ``channel`` is what the kernels read).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .fp_packing import FP4_MAX, FP8_MAX, e8m0_encode, fp8_scale_encode, pack_fp4, static_input_scale
from .fp_packing import static_act_max as fp_static_act_max
from .packing import pack_bits

__all__ = ["QUANT_METHOD", "PACK_QUANTIZED", "INT_QUANTIZED", "FLOAT_QUANTIZED", "MXFP8_QUANTIZED", "MXFP4_PACKED",
           "NVFP4_PACKED", "MIXED", "FP8_MAX", "FP4_MAX", "ct_format", "weight_args", "input_args", "layer_tensors",
           "static_input_tensors", "static_act_max", "ct_pack", "ct_unpack", "LAYER_TENSORS"]

QUANT_METHOD = "compressed-tensors"
PACK_QUANTIZED = "pack-quantized"
INT_QUANTIZED = "int-quantized"
FLOAT_QUANTIZED = "float-quantized"
MXFP8_QUANTIZED = "mxfp8-quantized"
MXFP4_PACKED = "mxfp4-pack-quantized"
NVFP4_PACKED = "nvfp4-pack-quantized"
MIXED = "mixed-precision"  # the top-level format when groups use different ones (each group names its own)


# every tensor a quantized layer may have besides its bias (the reader takes these out of the float tensors)
LAYER_TENSORS = ("weight", "weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_global_scale",
                 "input_scale", "input_global_scale", "input_zero_point")

_SCALE_DTYPE = {"mx_fp": "torch.uint8", "nv_fp": "torch.float8_e4m3fn"}  # serialised scale_dtype of FP4/MX groups


def ct_format(scheme) -> str:
    """The compressed-tensors format holding a layer quantized with ``scheme`` (a ValueError names what cannot be)."""
    dt, bits = scheme.data_type, scheme.bits
    if dt == "int":
        if scheme.quantizes_activations and scheme.act_dtype != "int":
            raise ValueError(f"compressed-tensors has no int weights with {scheme.act_dtype} activations "
                             f"({scheme.short_name()})")
        return INT_QUANTIZED if scheme.quantizes_activations else PACK_QUANTIZED
    if dt == "fp" and bits == 8:
        return FLOAT_QUANTIZED
    if dt == "mx_fp":
        return {4: MXFP4_PACKED, 8: MXFP8_QUANTIZED}[bits]
    if dt == "nv_fp" and bits == 4:
        return NVFP4_PACKED
    raise ValueError(f"compressed-tensors cannot hold {bits}-bit {dt} weights ({scheme.short_name()}); it holds int, "
                     f"fp (FP8), mx_fp and nv_fp")


def _strategy(data_type: str, group_size: int, group_rows: int, per_row: str) -> dict[str, Any]:
    if data_type == "nv_fp":
        return {"group_size": group_size, "strategy": "tensor_group"}
    if group_rows > 1:
        return {"group_size": None, "strategy": "block", "block_structure": [group_rows, group_size]}
    if group_size > 0:
        return {"group_size": group_size, "strategy": "group"}
    if group_size == -1 or (data_type == "int" and per_row == "channel"):
        return {"group_size": None, "strategy": per_row}
    return {"group_size": None, "strategy": "tensor"}


def weight_args(scheme) -> dict[str, Any]:
    """The ``weights`` QuantizationArgs of a config group, as compressed-tensors serialises them."""
    ct_format(scheme)
    args = {"num_bits": scheme.bits, "type": "int" if scheme.data_type == "int" else "float", "symmetric": scheme.sym,
            **_strategy(scheme.data_type, scheme.group_size, scheme.group_rows, "channel"), "dynamic": False}
    if scheme.data_type in _SCALE_DTYPE:
        args["scale_dtype"] = _SCALE_DTYPE[scheme.data_type]
    return args


def input_args(scheme) -> dict[str, Any] | None:
    """The ``input_activations`` QuantizationArgs, or None when the layer's inputs stay in float."""
    if not scheme.quantizes_activations:
        return None
    dt, group = scheme.act_dtype, scheme.act_group
    if dt not in ("int", "fp", "mx_fp", "nv_fp"):
        raise ValueError(f"compressed-tensors cannot quantize activations as {dt} ({scheme.short_name()}): its MX "
                         f"activations round the E8M0 scale down (mx_fp), not up (rceil)")
    if dt == "int" and not scheme.act_dynamic:
        raise ValueError(f"static int activations are not written to compressed-tensors ({scheme.short_name()}); "
                         f"use dynamic per-token int8 (INT8_W8A8) or FP8_STATIC")
    if dt in ("int", "fp") and group > 0 and not scheme.act_dynamic:
        raise ValueError(f"static grouped activations cannot be stored in compressed-tensors ({scheme.short_name()})")
    args = {"num_bits": scheme.act_bits, "type": "int" if dt == "int" else "float", "symmetric": scheme.act_symmetric,
            **_strategy(dt, group, 1, "token"), "dynamic": scheme.act_dynamic}
    if dt == "nv_fp":
        args["dynamic"] = True if scheme.act_dynamic else "local"  # "local": FP8 scales per input, global scale static
    if dt in _SCALE_DTYPE:
        args["scale_dtype"] = _SCALE_DTYPE[dt]
    return args


def ct_pack(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """compressed-tensors' dense int32 packing of unsigned codes along ``dim`` (padded to 32 codes, then cut
    to ``ceil(n * bits / 32)`` words)."""
    n = codes.shape[dim]
    pad = -n % 32
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad) if dim == 1 else (0, 0, 0, pad))
    words = pack_bits(codes, bits, dim=dim)
    keep = math.ceil(n * bits / 32)
    return (words[:, :keep] if dim == 1 else words[:keep]).contiguous()


def ct_unpack(words: torch.Tensor, bits: int, dim: int, length: int) -> torch.Tensor:
    """Inverse of ``ct_pack``: the first ``length`` unsigned uint8 codes along ``dim``."""
    from .packing import unpack_bits

    full = math.ceil(length / 32) * bits
    have = words.shape[dim]
    if have != math.ceil(length * bits / 32):
        raise ValueError(f"{have} packed words along dim {dim} cannot hold {length} {bits}-bit codes "
                         f"(expected {math.ceil(length * bits / 32)})")
    if full > have:
        words = torch.nn.functional.pad(words, (0, full - have) if dim == 1 else (0, 0, 0, full - have))
    return unpack_bits(words, bits, dim=dim, length=length)


def _int_tensors(scheme, qw, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    if not scheme.sym:  # the support matrix refuses asym before calibration (formats/support.py says why)
        raise ValueError(f"compressed-tensors export writes sym int only, got {scheme.short_name()}")
    half = 2 ** (qw.bits - 1)
    scale = qw.scale.to(dtype).contiguous()  # (N, G); (N, 1) per channel
    if ct_format(scheme) == INT_QUANTIZED:
        return {"weight": (qw.codes.to(torch.int16) - half).to(torch.int8), "weight_scale": scale}
    return {"weight_packed": ct_pack(qw.codes, qw.bits, dim=1), "weight_scale": scale,
            "weight_shape": torch.tensor(list(qw.shape), dtype=torch.int64)}


def _fp_tensors(scheme, fq) -> dict[str, torch.Tensor]:
    fmt = ct_format(scheme)
    if fmt == FLOAT_QUANTIZED:
        scale = fq.scale.float()
        if scheme.group_size == 0:
            scale = scale.reshape(1)
        return {"weight": fq.codes.view(torch.float8_e4m3fn), "weight_scale": scale.contiguous()}
    if fmt == MXFP8_QUANTIZED:
        return {"weight": fq.codes.view(torch.float8_e4m3fn), "weight_scale": e8m0_encode(fq.scale)}
    out = {"weight_packed": pack_fp4(fq.codes)}
    if fmt == MXFP4_PACKED:
        out["weight_scale"] = e8m0_encode(fq.scale)
    else:
        out["weight_scale"] = fp8_scale_encode(fq.scale)
        out["weight_global_scale"] = fq.global_scale.float().reshape(1)
    return out


def layer_tensors(scheme, result, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of one quantized layer (``result``: QuantizedWeight for int, FPQuantized otherwise);
    ``dtype``: the model's float dtype, which int scales take (as compressed-tensors' own layers have)."""
    if scheme.data_type == "int":
        return _int_tensors(scheme, result, dtype)
    if result.data_type != scheme.data_type or result.bits != scheme.bits:
        raise ValueError(f"codes are {result.bits}-bit {result.data_type}, the scheme says {scheme.short_name()}")
    return _fp_tensors(scheme, result)


def static_input_tensors(scheme, act_max: torch.Tensor) -> dict[str, torch.Tensor]:
    """``input_scale`` (FP8) or ``input_global_scale`` (NVFP4) of a layer with static activations."""
    amax = act_max.detach().float().reshape(1)
    if scheme.act_dtype == "fp":
        return {"input_scale": static_input_scale("fp", amax)}
    if scheme.act_dtype == "nv_fp":
        return {"input_global_scale": static_input_scale("nv_fp", amax)}
    raise ValueError(f"no static activation tensors for {scheme.act_dtype} ({scheme.short_name()})")


def static_act_max(scheme, stored: torch.Tensor) -> torch.Tensor:
    """The act max whose stored form is exactly ``stored`` (``fp_packing.static_act_max``)."""
    return fp_static_act_max(scheme.act_dtype, stored)
