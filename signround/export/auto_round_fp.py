"""The floating-point and microscaling layers of an ``auto_round`` checkpoint, as auto-round 0.16.1 writes them.

Reference §5.1, checked against the auto-round 0.16.1 exporters (``export_to_autoround/qlinear_fp.py``,
``export_to_fp8.py``) and the tensors its own exports hold. ``K`` = in_features, ``N`` = out_features,
``G = K / group_size``. Every scale is written exactly as ``FPQuantized`` holds it.

| data type | ``<layer>.`` tensors | ``packing_format`` |
|---|---|---|
| MXFP4 (``mx_fp``/``mx_fp_rceil``, 4 bits) | ``weight_packed`` (N, K/2) uint8; ``weight_scale`` (N, G) uint8 E8M0 | ``auto_round:llm_compressor`` |
| MXFP8 (``mx_fp``/``mx_fp_rceil``, 8 bits) | ``weight`` (N, K) float8_e4m3fn; ``weight_scale`` (N, G) uint8 E8M0 | ``auto_round:llm_compressor`` |
| MXINT4 (``mx_int``, 4 bits) | ``weight_packed`` (N, K/2) uint8 sign-magnitude; ``weight_scale`` (N, G) uint8 E8M0 | ``auto_round`` |
| NVFP4 (``nv_fp``) | ``weight_packed`` (N, K/2) uint8; ``weight_scale`` (N, G) float8_e4m3fn; ``weight_global_scale`` (1,) fp32; static act: ``input_global_scale`` (1,) fp32 | ``auto_round:llm_compressor`` |
| FP8 (``fp``) per tensor / channel / group | ``weight`` (N, K) float8_e4m3fn; ``weight_scale`` (1,) / (N,) / (N, G) fp32; static act: ``input_scale`` (1,) fp32 | ``auto_round:fp8_static`` (static act), else ``auto_round:fp8`` |
| FP8 2-D blocks (``group_rows`` > 1) | ``weight`` (N, K) float8_e4m3fn; ``weight_scale_inv`` (ceil(N/R), ceil(K/C)) fp32 | ``auto_round:fp8`` |

FP4 bytes (``formats/fp_packing.py``): element ``2k`` in the low nibble, ``2k+1`` in the high nibble; each nibble
is ``sign << 3 | m``, ``m`` indexing the E2M1 magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 (MXINT4: ``m / 4``)::

    byte  = | b7 b6 b5 b4 | b3 b2 b1 b0 |
            |  elem 2k+1  |   elem 2k   |     value = (-1)**b3 * table[b2 b1 b0] * scale

Where we differ from auto-round, on purpose: FP8 scales are fp32 (auto-round writes the model dtype, bf16,
which would round our exact scales; its loader casts them to its own dtype anyway), and weight-only FP8
says ``packing_format: auto_round:fp8`` (auto-round writes no packing_format there). Per-group (1 x g) FP8
has a 2-D ``weight_scale``: auto-round flattens it and cannot load it back. Int layers beside FP ones in a
checkpoint whose global scheme is FP (an int8 lm_head under MXFP4) keep the int tensors with raw zero points
(as ``packing_format: auto_round``); auto-round itself cannot write or run such a mix.
Reference §5.1 names the packing formats ``auto_round:mx_fp`` / ``auto_round:nv_fp``: those are auto-round's
export backend names; its files say ``auto_round:llm_compressor``, the only value its loader accepts.
Activation keys follow auto-round: a static NVFP4 activation is ``act_data_type: nv_fp4_with_static_gs`` with
``act_dynamic: true`` (only its global scale is calibrated); FP8 adds ``fmt`` and ``activation_scheme``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..formats.fp_packing import FP4_MAX, FP8_MAX, e8m0_encode, fp8_scale_encode, pack_fp4, static_input_scale
from ..quant.fp_types import FPQuantized
from ..schemes import QuantScheme

__all__ = ["FP8_MAX", "FP4_MAX", "LLM_COMPRESSOR_PACKING", "FP8_PACKING", "FP8_STATIC_PACKING", "MX_INT_PACKING",
           "NV_STATIC_ACT", "is_fp_scheme", "fp_packing", "fp_scheme_keys", "act_keys", "fp_config_extras", "fp_layer_tensors",
           "to_sign_magnitude"]

LLM_COMPRESSOR_PACKING = "auto_round:llm_compressor"  # what auto-round writes (and loads) for MX and NV FP
FP8_PACKING = "auto_round:fp8"
FP8_STATIC_PACKING = "auto_round:fp8_static"
MX_INT_PACKING = "auto_round"
NV_STATIC_ACT = "nv_fp4_with_static_gs"  # auto-round's act_data_type for NVFP4 activations with a calibrated global scale


def is_fp_scheme(scheme: QuantScheme) -> bool:
    return scheme.is_quantized and scheme.data_type not in ("int", "gguf", "float")


def _static_fp8(scheme: QuantScheme) -> bool:
    return scheme.quantizes_activations and not scheme.act_dynamic and scheme.act_dtype == "fp"


def _static_nv(scheme: QuantScheme) -> bool:
    return scheme.quantizes_activations and not scheme.act_dynamic and scheme.act_dtype == "nv_fp"


def fp_packing(scheme: QuantScheme) -> str:
    """The ``packing_format`` auto-round uses for a checkpoint whose global scheme is ``scheme`` (an FP one)."""
    if scheme.data_type == "fp":
        return FP8_STATIC_PACKING if _static_fp8(scheme) else FP8_PACKING
    if scheme.data_type == "mx_int":
        return MX_INT_PACKING
    return LLM_COMPRESSOR_PACKING


def _group_key(scheme: QuantScheme) -> "int | list[int]":
    if scheme.group_rows > 1:
        return [scheme.group_rows, scheme.group_size]
    return scheme.group_size  # -1 per channel, 0 per tensor: auto-round's own values for FP8


def fp_scheme_keys(scheme: QuantScheme) -> dict[str, Any]:
    """The weight keys of one FP layer in auto-round's spelling (2-D FP8 blocks: ``group_size: [rows, cols]``)."""
    return {"bits": scheme.bits, "group_size": _group_key(scheme), "sym": scheme.sym, "data_type": scheme.data_type}


def act_keys(scheme: QuantScheme) -> dict[str, Any]:
    """The act_* keys of one layer (``act_bits: 16`` alone when its inputs stay in high precision)."""
    if not scheme.quantizes_activations:
        return {"act_bits": 16}
    act_dtype, dynamic = scheme.act_dtype, scheme.act_dynamic
    if _static_nv(scheme):
        act_dtype, dynamic = NV_STATIC_ACT, True  # the per-16 FP8 scales are per input; the global scale is static
    return {"act_bits": scheme.act_bits, "act_group_size": scheme.act_group, "act_sym": scheme.act_symmetric,
            "act_data_type": act_dtype, "act_dynamic": dynamic}


def fp_config_extras(scheme: QuantScheme) -> dict[str, Any]:
    """Top-level keys auto-round adds for an FP8 checkpoint (``fmt``, ``activation_scheme``, ``weight_block_size``)."""
    if scheme.data_type != "fp":
        return {}
    extras: dict[str, Any] = {"fmt": "e4m3", "activation_scheme": "static" if _static_fp8(scheme) else "dynamic"}
    if scheme.group_rows > 1:
        extras["weight_block_size"] = [scheme.group_rows, scheme.group_size]
    return extras


def to_sign_magnitude(codes: torch.Tensor) -> torch.Tensor:
    """4-bit two's complement MXINT codes (``|q| <= 7``) -> auto-round's ``sign << 3 | |q|`` nibbles."""
    q = codes.to(torch.int16) & 15
    q = torch.where(q >= 8, q - 16, q)  # (N, K) in [-8, 7]
    if bool((q == -8).any()):
        raise ValueError("MXINT4 code -8 has no sign-magnitude form (|q| must be <= 7)")
    return ((q < 0).to(torch.int16) << 3 | q.abs()).to(torch.uint8)


def _input_scale(name: str, scheme: QuantScheme, act_max: "torch.Tensor | None") -> dict[str, torch.Tensor]:
    if not (_static_fp8(scheme) or _static_nv(scheme)):
        return {}
    if act_max is None:
        raise ValueError(f"layer {name} quantizes its inputs with a static scale ({scheme.short_name()}) but no "
                         f"calibrated act_max reached the writer (ExportInput.act_max[{name!r}])")
    amax = act_max.detach().float().cpu().reshape(())
    if not bool(torch.isfinite(amax)) or float(amax) <= 0:
        raise ValueError(f"layer {name}: act_max must be a positive finite number, got {float(amax)}")
    if _static_fp8(scheme):
        return {"input_scale": static_input_scale("fp", amax).reshape(1)}
    return {"input_global_scale": static_input_scale("nv_fp", amax).reshape(1)}


def _check_shape(name: str, qw: FPQuantized, scheme: QuantScheme) -> None:
    out_f, in_f = qw.shape
    if (qw.data_type, qw.bits) != (scheme.data_type, scheme.bits):
        raise ValueError(f"layer {name}: the plan says {scheme.data_type} {scheme.bits}-bit, the codes are "
                         f"{qw.data_type} {qw.bits}-bit")
    if qw.data_type != "fp" and in_f % qw.group_size:
        raise ValueError(f"layer {name}: in_features {in_f} is not a multiple of group_size {qw.group_size}; "
                         f"auto_round {qw.data_type} layers hold whole groups only")
    if qw.data_type == "mx_int" and qw.bits != 4:
        raise ValueError(f"layer {name}: auto_round stores MXINT with 4 bits only, got {qw.bits}")
    del out_f


def fp_layer_tensors(name: str, scheme: QuantScheme, qw: FPQuantized,
                     act_max: "torch.Tensor | None" = None) -> dict[str, torch.Tensor]:
    """The tensors of one FP layer (module docstring), keyed by suffix."""
    if not isinstance(qw, FPQuantized):
        raise TypeError(f"layer {name} has an FP scheme ({scheme.short_name()}) but {type(qw).__name__} codes")
    _check_shape(name, qw, scheme)
    codes, scale = qw.codes.cpu(), qw.scale.detach().float().cpu()
    if qw.data_type == "fp":
        weight = codes.view(torch.float8_e4m3fn)
        if scheme.group_rows > 1:  # 2-D blocks (DeepSeek naming)
            tensors = {"weight": weight, "weight_scale_inv": scale.contiguous()}
        elif scheme.group_size == 0:  # one scale for the whole tensor
            tensors = {"weight": weight, "weight_scale": scale.reshape(1)}
        elif scheme.group_size == -1:  # per channel: (N,), as auto-round's FP8 modules hold it
            tensors = {"weight": weight, "weight_scale": scale.reshape(-1).contiguous()}
        else:
            tensors = {"weight": weight, "weight_scale": scale.contiguous()}
        return {**tensors, **_input_scale(name, scheme, act_max)}
    if qw.data_type == "nv_fp":
        return {"weight_packed": pack_fp4(codes), "weight_scale": fp8_scale_encode(scale),
                "weight_global_scale": qw.global_scale.detach().float().cpu().reshape(1),
                **_input_scale(name, scheme, act_max)}
    stored_scale = e8m0_encode(scale)  # MX: (N, G) uint8
    if qw.data_type == "mx_int":
        return {"weight_packed": pack_fp4(to_sign_magnitude(codes)), "weight_scale": stored_scale}
    if qw.bits == 8:
        return {"weight": codes.view(torch.float8_e4m3fn), "weight_scale": stored_scale}
    return {"weight_packed": pack_fp4(codes), "weight_scale": stored_scale}
