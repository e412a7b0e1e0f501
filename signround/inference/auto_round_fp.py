"""Decode the FP/MX layers of an ``auto_round`` checkpoint (ours or auto-round's) into ``FPQuantized``.

The tensors and keys are those ``export/auto_round_fp.py`` documents (what auto-round 0.16.1 writes).
Which layers are FP comes from the config: the global ``data_type`` and each layer's ``extra_config``
entry (an exact name first, then the first regex, as for int layers). A layer the config calls FP must
hold exactly its tensors with their shapes and dtypes; anything else is an error naming file and tensor.

No CPU kernel multiplies FP4/FP8 codes directly, so these layers are dequantized by their backend
(``packed_dequant``: in each forward, codes kept packed; ``dequant``: once at load) and the log says which. Static activation scales are read back as the calibrated
max |input|: FP8 ``input_scale * 448``, NVFP4 ``448 * 6 / input_global_scale``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from ..export.auto_round_fp import NV_STATIC_ACT
from ..formats.fp_packing import e8m0_decode, static_act_max, unpack_fp4
from ..quant.fp_types import FPQuantized
from ..schemes import DATA_TYPES, QuantScheme
from .layouts import CheckpointError, check_finite
from .packed_stream import ShardTensors

__all__ = ["FP_PACKINGS", "FPLayers", "fp_layer_scheme", "resolve_fp_schemes", "decode_fp_layer", "take_fp_layers",
           "is_fp_config", "from_sign_magnitude", "input_schemes"]

logger = logging.getLogger(__name__)

# packing formats whose checkpoint's global scheme is FP: auto-round writes the first three; the others are
# auto-round's backend names for the same tensors, accepted as synonyms
FP_PACKINGS = ("auto_round:llm_compressor", "auto_round:fp8", "auto_round:fp8_static", "auto_round:mx_fp",
               "auto_round:nv_fp", "auto_round:mx_fp_rceil")
FP_TENSORS = ("weight_packed", "weight_scale", "weight_scale_inv", "weight_global_scale", "input_scale",
              "input_global_scale")  # plus "weight" (FP8 codes), which a float layer has too
_SCHEME_KEYS = ("bits", "group_size", "sym", "data_type", "act_bits", "act_group_size", "act_sym", "act_data_type",
                "act_dynamic")


def is_fp_config(qc: dict[str, Any]) -> bool:
    """Whether a quantization_config's global scheme is FP/MX (its packing format or its data_type says so)."""
    data_type = str(qc.get("data_type", "int"))
    return qc.get("packing_format") in FP_PACKINGS or (data_type in DATA_TYPES and data_type != "int")


def _scheme(entry: dict[str, Any], where: str) -> QuantScheme | None:
    """auto-round's scheme keys -> our QuantScheme (None: the layer stays float); a bad combination is an error."""
    bits = int(entry.get("bits", 16))
    if bits >= 16:
        return None
    gs, rows = entry.get("group_size", 128), 1
    if isinstance(gs, (list, tuple)):  # 2-D FP8 blocks
        if len(gs) != 2:
            raise CheckpointError(f"{where}: group_size {gs!r} must be one size or [rows, cols]")
        rows, gs = int(gs[0]), int(gs[1])
    kw: dict[str, Any] = dict(bits=bits, group_size=int(gs), group_rows=rows, sym=bool(entry.get("sym", True)),
                              data_type=str(entry.get("data_type", "int")))
    act_bits = entry.get("act_bits")
    if act_bits is not None and int(act_bits) < 16:
        act_dtype, dynamic = entry.get("act_data_type"), bool(entry.get("act_dynamic", True))
        if act_dtype == NV_STATIC_ACT:  # auto-round's name for NVFP4 inputs under a calibrated global scale
            act_dtype, dynamic = "nv_fp", False
        kw.update(act_bits=int(act_bits), act_data_type=act_dtype, act_dynamic=dynamic,
                  act_group_size=entry.get("act_group_size"), act_sym=entry.get("act_sym"))
    try:
        return QuantScheme(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the scheme {kw} is not one signround can read: {e}") from None


def fp_layer_scheme(qc: dict[str, Any], entry: dict[str, Any] | None, where: str) -> QuantScheme | None:
    """One layer's scheme: the global keys of ``qc`` overridden by its ``extra_config`` entry."""
    merged = {k: qc[k] for k in _SCHEME_KEYS if qc.get(k) is not None}
    merged.update({k: v for k, v in (entry or {}).items() if k in _SCHEME_KEYS and v is not None})
    if int(merged.get("bits", 4)) < 16 and int(merged.get("act_bits") or 16) >= 16:
        merged = {k: v for k, v in merged.items() if not k.startswith("act_")}
    return _scheme(merged, where)


def resolve_fp_schemes(qc: dict[str, Any], names: list[str], where: str) -> dict[str, QuantScheme | None]:
    """Each layer's scheme, ``extra_config`` applied as for int layers: an exact name first, then the first regex."""
    extra = qc.get("extra_config") or {}
    out = {}
    for name in names:
        entry = extra.get(name)
        if entry is None:
            entry = next((v for k, v in extra.items() if k not in names and re.search(k, name)), None)
        out[name] = fp_layer_scheme(qc, entry, f"{where} ({name})")
    return out


def input_schemes(qc: dict[str, Any], names: list[str], where: str) -> dict[str, QuantScheme]:
    """{layer: scheme} of the (int) layers ``names`` whose config quantizes their inputs (dynamic int: INT8_W8A8)."""
    entries = [qc, *(qc.get("extra_config") or {}).values()]
    if not any(isinstance(e, dict) and int(e.get("act_bits") or 16) < 16 for e in entries):
        return {}  # weight-only: nothing to resolve
    return {n: s for n, s in resolve_fp_schemes(qc, names, where).items() if s is not None and s.quantizes_activations}


def from_sign_magnitude(nibbles: torch.Tensor) -> torch.Tensor:
    """auto-round's MXINT4 nibbles ``sign << 3 | |q|`` -> 4-bit two's complement codes (``FPQuantized``)."""
    mag = (nibbles & 7).to(torch.int16)
    q = torch.where((nibbles & 8) > 0, -mag, mag)
    return (q & 15).to(torch.uint8)


class _Reader:
    """The tensors of one layer, each checked for presence, dtype and shape, with "file: tensor" in messages."""

    def __init__(self, name: str, tensors: dict[str, torch.Tensor], where: dict[str, str]) -> None:
        self.name, self.tensors, self.where = name, tensors, where

    def at(self, key: str) -> str:
        full = f"{self.name}.{key}"
        return f"{self.where.get(full, '?')}: {full}"

    def get(self, key: str, dtype: "torch.dtype | None", shape: "tuple[int, ...] | None", why: str) -> torch.Tensor:
        full = f"{self.name}.{key}"
        if full not in self.tensors:
            raise CheckpointError(f"{self.where.get(self._any(), '?')}: FP layer {self.name} ({why}) lacks {full}")
        t = self.tensors[full]
        if dtype is not None and t.dtype != dtype:
            raise CheckpointError(f"{self.at(key)} is {t.dtype}, expected {dtype} ({why})")
        if dtype is None:
            if not t.is_floating_point():
                raise CheckpointError(f"{self.at(key)} is {t.dtype}, expected a floating-point scale ({why})")
            check_finite(t, self.at(key))
        if shape is not None and tuple(t.shape) != shape:
            raise CheckpointError(f"{self.at(key)} has shape {tuple(t.shape)}, expected {shape} ({why})")
        return t

    def _any(self) -> str:
        return next((f"{self.name}.{k}" for k in ("weight_packed", "weight", *FP_TENSORS)
                     if f"{self.name}.{k}" in self.where), f"{self.name}.weight")


def _positive(t: torch.Tensor, at: str) -> torch.Tensor:
    if not bool((t > 0).all()):
        raise CheckpointError(f"{at} holds {int((t <= 0).sum())} non-positive scale(s) of {t.numel()}")
    return t


def _fp8(r: _Reader, scheme: QuantScheme, shape: tuple[int, int]) -> FPQuantized:
    out_f, in_f = shape
    codes = r.get("weight", torch.float8_e4m3fn, shape, "FP8 E4M3 codes").view(torch.uint8)
    if scheme.group_rows > 1:
        rows, cols = scheme.group_rows, scheme.group_size
        want = (-(-out_f // rows), -(-in_f // cols))
        scale = r.get("weight_scale_inv", None, want, f"one scale per {rows}x{cols} block").float()
        gs = cols
    else:
        full = f"{r.name}.weight_scale"
        t = r.tensors.get(full)
        if scheme.group_size == 0:
            scale, gs, rows = r.get("weight_scale", None, (1,) if t is None or t.dim() == 1 else (1, 1),
                                    "one scale per tensor").float().reshape(1, 1), in_f, out_f
        elif scheme.group_size == -1:
            want = (out_f,) if t is None or t.dim() == 1 else (out_f, 1)
            scale, gs, rows = r.get("weight_scale", None, want, "one scale per channel").float().reshape(out_f, 1), in_f, 1
        else:
            gs, rows = scheme.group_size, 1
            scale = r.get("weight_scale", None, (out_f, -(-in_f // gs)), f"one scale per {gs} inputs").float()
    _positive(scale, r.at("weight_scale_inv" if scheme.group_rows > 1 else "weight_scale"))
    return FPQuantized(codes.contiguous(), scale.contiguous(), "fp", 8, gs, rows)


def _in_features(r: _Reader, key: str, packed: bool) -> tuple[int, int]:
    full = f"{r.name}.{key}"
    t = r.tensors.get(full)
    if t is None or t.dim() != 2:
        raise CheckpointError(f"{r.where.get(full, r.where.get(r._any(), '?'))}: FP layer {r.name} needs a 2-D {full}")
    return t.shape[0], t.shape[1] * (2 if packed else 1)


def decode_fp_layer(name: str, scheme: QuantScheme, tensors: dict[str, torch.Tensor], where: dict[str, str],
                    in_features: int | None = None) -> FPQuantized:
    """The ``FPQuantized`` of layer ``name`` stored as ``scheme`` says (tensors are checked, not consumed)."""
    r = _Reader(name, tensors, where)
    dt, bits = scheme.data_type, scheme.bits
    fp8_elements = dt == "fp" or (dt in ("mx_fp", "mx_fp_rceil") and bits == 8)
    out_f, in_f = _in_features(r, "weight" if fp8_elements else "weight_packed", not fp8_elements)
    if in_features is not None and in_features != in_f:
        raise CheckpointError(f"{r.at('weight' if fp8_elements else 'weight_packed')} holds {in_f} inputs, the model "
                              f"expects {in_features}")
    if dt == "fp":
        return _fp8(r, scheme, (out_f, in_f))
    gs = scheme.group_size
    if in_f % gs:
        raise CheckpointError(f"{r.at('weight_scale')}: {in_f} inputs are not whole groups of {gs}")
    scale_shape = (out_f, in_f // gs)
    if dt == "nv_fp":
        codes = unpack_fp4(r.get("weight_packed", torch.uint8, (out_f, in_f // 2), "two E2M1 codes per byte"))
        scale = _positive(r.get("weight_scale", torch.float8_e4m3fn, scale_shape, "FP8 E4M3 scale per 16").float(),
                          r.at("weight_scale"))
        gscale = r.get("weight_global_scale", None, None, "fp32 global scale").float()
        if gscale.numel() != 1:
            raise CheckpointError(f"{r.at('weight_global_scale')} has {gscale.numel()} values, expected 1")
        _positive(gscale, r.at("weight_global_scale"))
        return FPQuantized(codes, scale, "nv_fp", 4, gs, 1, gscale.reshape(()))
    stored = r.get("weight_scale", torch.uint8, scale_shape, "E8M0 exponent + 127 per 32")
    if bool((stored == 255).any()):
        raise CheckpointError(f"{r.at('weight_scale')} holds {int((stored == 255).sum())} E8M0 NaN byte(s) (255)")
    scale = e8m0_decode(stored)
    if dt == "mx_int":
        if bits != 4:
            raise CheckpointError(f"{r.at('weight_packed')}: auto_round MXINT layers are 4-bit, the config says {bits}")
        codes = from_sign_magnitude(unpack_fp4(r.get("weight_packed", torch.uint8, (out_f, in_f // 2), "two nibbles")))
        return FPQuantized(codes, scale, "mx_int", 4, gs)
    if bits == 8:
        codes = r.get("weight", torch.float8_e4m3fn, (out_f, in_f), "FP8 E4M3 codes").view(torch.uint8)
        return FPQuantized(codes.contiguous(), scale, dt, 8, gs)
    codes = unpack_fp4(r.get("weight_packed", torch.uint8, (out_f, in_f // 2), "two E2M1 codes per byte"))
    return FPQuantized(codes, scale, dt, 4, gs)


def _act_max(r: _Reader, scheme: QuantScheme) -> torch.Tensor | None:
    """The calibrated max |input| a static activation scale stands for (None for dynamic activations)."""
    if not scheme.quantizes_activations or scheme.act_dynamic:
        return None
    key = "input_global_scale" if scheme.act_dtype == "nv_fp" else "input_scale"
    t = r.get(key, None, None, "static activation scale").float()
    if t.numel() != 1:
        raise CheckpointError(f"{r.at(key)} has {t.numel()} values, expected one per tensor")
    _positive(t, r.at(key))
    value = t.reshape(())
    return static_act_max(scheme.act_dtype, value)


@dataclass
class FPLayers:
    layers: dict[str, FPQuantized] = field(default_factory=dict)
    decoders: dict[str, Callable[[], FPQuantized]] = field(default_factory=dict)  # streamed: decoded when built
    act_schemes: dict[str, QuantScheme] = field(default_factory=dict)
    act_max: dict[str, torch.Tensor] = field(default_factory=dict)


def _dtype(tensors: dict[str, torch.Tensor], name: str) -> "torch.dtype | None":
    return tensors.header(name)[1] if isinstance(tensors, ShardTensors) else tensors[name].dtype


def take_fp_layers(qc: dict[str, Any], tensors: dict[str, torch.Tensor], where: dict[str, str], config_path: Path,
                   in_features: dict[str, int] | None = None, source: "ShardTensors | None" = None) -> FPLayers:
    """Decode every FP layer of an auto_round checkpoint and remove its tensors from ``tensors``.

    ``source`` (streamed loading: ``tensors`` and ``source`` both ``ShardTensors`` of the files): each layer
    is decoded from ``source`` only when the loader builds it (``FPLayers.decoders``), so one layer's codes
    exist at a time; its errors then surface at that point."""
    candidates = sorted({k.rsplit(".", 1)[0] for k in tensors
                         if k.rsplit(".", 1)[-1] in FP_TENSORS or _dtype(tensors, k) == torch.float8_e4m3fn})
    schemes = resolve_fp_schemes(qc, candidates, str(config_path))
    out = FPLayers()
    schemes_of: dict[str, QuantScheme] = {}  # streamed layers' schemes, for the log line
    for name in candidates:
        scheme = schemes[name]
        if scheme is None or scheme.data_type == "int":
            kind = "stays in float" if scheme is None else "is an int layer"
            raise CheckpointError(f"{where.get(_Reader(name, tensors, where)._any(), '?')}: {name} has FP tensors "
                                  f"({', '.join(k for k in ('weight', *FP_TENSORS) if f'{name}.{k}' in tensors)}), "
                                  f"but {config_path} says it {kind}")
        if source is None:
            out.layers[name] = decode_fp_layer(name, scheme, tensors, where, (in_features or {}).get(name))
        else:
            out.decoders[name] = partial(decode_fp_layer, name, scheme, source, where, (in_features or {}).get(name))
            schemes_of[name] = scheme
        if scheme.quantizes_activations:
            out.act_schemes[name] = scheme
            amax = _act_max(_Reader(name, tensors, where), scheme)
            if amax is not None:
                out.act_max[name] = amax
        for k in ("weight", *FP_TENSORS):
            tensors.discard(f"{name}.{k}") if source is not None else tensors.pop(f"{name}.{k}", None)
    if out.layers or out.decoders:
        kinds = sorted({f"{q.data_type} {q.bits}-bit" for q in [*out.layers.values(), *schemes_of.values()]})
        logger.info("%d FP layers (%s): no CPU kernel multiplies FP4/FP8 codes, so each is dequantized by its backend "
                    "(packed_dequant: in every forward; dequant: once at load)",
                    len(out.layers) + len(out.decoders), ", ".join(kinds))
    return out
