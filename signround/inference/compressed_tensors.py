"""Read a compressed-tensors checkpoint (``quant_method: compressed-tensors``) into per-layer results.

Int layers become ``QuantizedWeight``, FP layers ``FPQuantized``; the loader gives each the backend
``backends.py`` selects (CPU has no FP4/FP8 kernel: FP layers run on ``packed_dequant``, codes packed and
the weight rebuilt in each forward, or on ``dequant``, dequantized once, and the log says which).
Tensor layouts are ``formats/ct_layout.py``'s. Each quantized layer's scheme comes from its config group:
an exact target name first, then a ``re:`` regex (``re.match``), then a class target (``Linear``); a name in
``ignore`` stays float. Strict like the other readers: a layer with quantized tensors that the config leaves
float, a Linear the config quantizes but the files hold in float (what makes transformers produce NaN
logits), or a tensor of the wrong shape or dtype is a ``CheckpointError`` naming the file and tensor.

``stream=True`` (what ``load_quantized`` uses): tensors stay in their shards (``packed_stream.ShardTensors``)
and each layer is decoded when the loader asks for it, so loading holds one layer's tensors and codes at a
time as for auto_round. Configs, names and widths are still checked before anything is decoded; a layer's
tensor dtype or shape error surfaces when that layer is read.
"""

from __future__ import annotations

import copy
import logging
import re
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..formats import ct_layout as ct
from ..formats.fp_packing import e8m0_decode, unpack_fp4
from ..quant.fp_types import FPQuantized
from ..quant.types import QuantizedWeight
from ..schemes import QuantScheme
from .checkpoint import QuantizedCheckpoint, read_tensors, tensor_locations
from .layouts import CheckpointError, LayerSpec, Layout, check_finite
from .packed_stream import LazyLayers, ShardTensors

__all__ = ["read_compressed_tensors", "scheme_of_group"]

logger = logging.getLogger(__name__)

_STRATEGY_GROUP = {"channel": -1, "token": -1, "tensor": 0}


def _strategy(args: dict[str, Any]) -> str:
    """The strategy, inferred from group_size when absent (as compressed-tensors does)."""
    if args.get("strategy"):
        return str(args["strategy"]).lower()
    gs = args.get("group_size")
    return "tensor" if gs is None else ("group" if gs > 0 else "channel")


def _elements(args: dict[str, Any], fmt: str | None) -> tuple[str, int, int]:
    """(data type, group_size, group_rows) of weight or activation args."""
    strategy, bits = _strategy(args), int(args.get("num_bits", 8))
    gs = args.get("group_size")
    if str(args.get("type", "int")).lower() == "int":
        if strategy in ("block", "tensor_group", "attn_head"):
            raise ValueError(f"int strategy {strategy!r} is not supported")
        return "int", int(gs) if strategy == "group" else _STRATEGY_GROUP[strategy], 1
    if strategy == "tensor_group" or fmt == ct.NVFP4_PACKED:
        return "nv_fp", int(gs or 16), 1
    if str(args.get("scale_dtype")) == "torch.uint8" or fmt in (ct.MXFP4_PACKED, ct.MXFP8_QUANTIZED):
        return "mx_fp", int(gs or 32), 1
    if bits != 8:
        raise ValueError(f"{bits}-bit float args outside NVFP4/MXFP4 are not supported")
    if strategy == "block":
        rows, cols = args.get("block_structure") or (0, 0)
        return "fp", int(cols), int(rows)
    return "fp", int(gs) if strategy == "group" else _STRATEGY_GROUP[strategy], 1


def scheme_of_group(group: dict[str, Any], fmt: str | None) -> QuantScheme:
    """The QuantScheme (weights and act_* fields) of one config group; a ValueError says what is unsupported."""
    w = group.get("weights")
    if not isinstance(w, dict):
        raise ValueError("the group has no weights args (activation-only groups are not supported)")
    dt, gs, rows = _elements(w, fmt)
    kw: dict[str, Any] = dict(bits=int(w.get("num_bits", 8)), group_size=gs, sym=bool(w.get("symmetric", True)),
                              data_type=dt, group_rows=rows)
    a = group.get("input_activations")
    if isinstance(a, dict):
        adt, ags, _ = _elements(a, None)
        dynamic = a.get("dynamic", False)
        kw.update(act_bits=int(a.get("num_bits", 8)), act_data_type=adt, act_group_size=ags,
                  act_sym=bool(a.get("symmetric", True)), act_dynamic=dynamic is True)
    return QuantScheme(**kw)


def _match(name: str, targets: list[str], linear: bool) -> int:
    """How ``name`` matches ``targets``: 3 exact, 2 regex, 1 class (a Linear), 0 not at all."""
    best = 0
    for t in targets:
        if t == name:
            return 3
        if t.startswith("re:"):
            if re.match(t[3:], name):
                best = max(best, 2)
        elif linear and "." not in t:
            best = max(best, 1)
    return best


class _Reader:
    def __init__(self, folder: Path, config: dict[str, Any], in_features: dict[str, int] | None,
                 stream: bool = False) -> None:
        self.folder, self.config = folder, config
        self.at_config = folder / "config.json"
        self.qc = config["quantization_config"]
        self.linears = in_features
        status = self.qc.get("quantization_status", "compressed")
        if status != "compressed":
            raise CheckpointError(f"{self.at_config}: quantization_status {status!r}: only compressed checkpoints "
                                  f"(quantized weights stored packed) can be loaded")
        groups = self.qc.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise CheckpointError(f"{self.at_config}: compressed-tensors quantization_config has no config_groups")
        self.groups: list[tuple[str, list[str], QuantScheme, str]] = []
        for gname, g in groups.items():
            fmt = g.get("format") or self.qc.get("format")
            try:
                scheme = scheme_of_group(g, fmt)
                fmt = fmt if fmt and fmt != ct.MIXED else ct.ct_format(scheme)
            except (ValueError, TypeError, KeyError) as e:
                raise CheckpointError(f"{self.at_config}: config group {gname}: {e}") from None
            self.groups.append((gname, list(g.get("targets") or []), scheme, fmt))
        self.ignore = list(self.qc.get("ignore") or [])
        if stream:
            self.where = tensor_locations(folder)
            self.tensors: "dict[str, torch.Tensor] | ShardTensors" = ShardTensors(self.where)
        else:
            self.tensors, self.where = read_tensors(folder)

    def shape_of(self, key: str) -> tuple[int, ...] | None:
        """A tensor's shape (from the file header when streamed, nothing read), None when absent."""
        if key not in self.tensors:
            return None
        return self.tensors.header(key)[0] if isinstance(self.tensors, ShardTensors) else tuple(self.tensors[key].shape)

    def group_of(self, name: str) -> tuple[str, list[str], QuantScheme, str] | None:
        if any(t == name or (t.startswith("re:") and re.match(t[3:], name)) for t in self.ignore):
            return None
        linear = self.linears is None or name in self.linears
        scored = [(_match(name, g[1], linear), i) for i, g in enumerate(self.groups)]
        score, i = max(scored, key=lambda s: (s[0], -s[1]))
        return self.groups[i] if score else None

    def take(self, name: str, key: str, dtype: "torch.dtype | tuple[torch.dtype, ...]",
             shape: tuple | None) -> torch.Tensor:
        full = f"{name}.{key}"
        if full not in self.tensors:
            anchor = self.where.get(f"{name}.weight_scale", str(self.folder))
            raise CheckpointError(f"{anchor}: quantized layer {name} lacks {full}")
        t, at = self.tensors[full], f"{self.where[full]}: {full}"  # the caller drops the layer's tensors after
        dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
        if t.dtype not in dtypes:
            raise CheckpointError(f"{at} is {t.dtype}, expected {' or '.join(map(str, dtypes))}")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{at} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if t.is_floating_point() and t.dtype not in (torch.float8_e4m3fn,):
            check_finite(t, at)
        return t

    def out_in(self, name: str, fmt: str) -> tuple[int, int]:
        key = "weight_packed" if fmt in (ct.PACK_QUANTIZED, ct.MXFP4_PACKED, ct.NVFP4_PACKED) else "weight"
        shape = self.shape_of(f"{name}.{key}")
        if shape is None:
            raise CheckpointError(f"{self.where[name + '.weight_scale']}: quantized layer {name} ({fmt}) lacks "
                                  f"{name}.{key}")
        if fmt == ct.PACK_QUANTIZED:
            shape = self.take(name, "weight_shape", (torch.int64, torch.int32), (2,))
            out_f, in_f = (int(v) for v in shape)
        else:
            out_f, in_f = shape[0], shape[1] * (2 if key == "weight_packed" else 1)
        want = (self.linears or {}).get(name)
        if want is not None and want != in_f:
            raise CheckpointError(f"{self.where[f'{name}.{key}']}: {name} holds {in_f} input features, the model "
                                  f"expects {want}")
        return out_f, in_f

    def decode_int(self, name: str, scheme: QuantScheme, fmt: str) -> QuantizedWeight:
        bits, half = scheme.bits, 2 ** (scheme.bits - 1)
        out_f, in_f = self.out_in(name, fmt)
        gs = scheme.group_size if scheme.group_size > 0 else in_f
        n_groups = -(-in_f // gs)
        scale = self.take(name, "weight_scale", (torch.float32, torch.float16, torch.bfloat16), None).float()
        if scheme.group_size == 0 and scale.numel() == 1:
            scale = scale.reshape(1, 1).expand(out_f, 1)
        if tuple(scale.shape) != (out_f, n_groups):
            raise CheckpointError(f"{self.where[name + '.weight_scale']}: {name}.weight_scale has shape "
                                  f"{tuple(scale.shape)}, expected {(out_f, n_groups)}")
        if fmt == ct.PACK_QUANTIZED:
            words = self.take(name, "weight_packed", torch.int32, (out_f, -(-in_f * bits // 32)))
            codes = ct.ct_unpack(words, bits, dim=1, length=in_f)
            zero = torch.full((out_f, n_groups), half, dtype=torch.uint8)
            if not scheme.sym:
                zp = self.take(name, "weight_zero_point", torch.int32, (-(-out_f * bits // 32), n_groups))
                zero = ct.ct_unpack(zp, bits, dim=0, length=out_f)
        elif fmt == ct.INT_QUANTIZED:
            q = self.take(name, "weight", torch.int8, (out_f, in_f))
            codes = (q.to(torch.int16) + half).to(torch.uint8)
            zero = torch.full((out_f, n_groups), half, dtype=torch.uint8)
            if not scheme.sym:
                zp = self.take(name, "weight_zero_point", torch.int8, (out_f, n_groups))
                zero = (zp.to(torch.int16) + half).to(torch.uint8)
        else:
            raise CheckpointError(f"{self.at_config}: int layer {name} in format {fmt!r} is not supported "
                                  f"(pack-quantized, int-quantized)")
        return QuantizedWeight(codes=codes.contiguous(), scale=scale.contiguous(), zero=zero.contiguous(), bits=bits,
                               group_size=gs, sym=scheme.sym)

    def decode_fp(self, name: str, scheme: QuantScheme, fmt: str) -> FPQuantized:
        out_f, in_f = self.out_in(name, fmt)
        gs = scheme.group_size if scheme.group_size > 0 else in_f
        rows = out_f if scheme.group_size == 0 else scheme.group_rows
        grid = (-(-out_f // rows), -(-in_f // gs))
        global_scale = None
        if fmt in (ct.FLOAT_QUANTIZED, ct.MXFP8_QUANTIZED):
            codes = self.take(name, "weight", torch.float8_e4m3fn, (out_f, in_f)).view(torch.uint8)
        elif fmt in (ct.MXFP4_PACKED, ct.NVFP4_PACKED):
            codes = unpack_fp4(self.take(name, "weight_packed", torch.uint8, (out_f, in_f // 2)))
        else:
            raise CheckpointError(f"{self.at_config}: {scheme.data_type} layer {name} in format {fmt!r} is not "
                                  f"supported")
        if fmt == ct.FLOAT_QUANTIZED:
            raw = self.take(name, "weight_scale", (torch.float32, torch.float16, torch.bfloat16), None)
            scale = raw.float().reshape(grid) if raw.numel() == grid[0] * grid[1] else raw
        elif fmt == ct.NVFP4_PACKED:
            scale = self.take(name, "weight_scale", torch.float8_e4m3fn, grid).float()
            global_scale = self.take(name, "weight_global_scale", torch.float32, None).reshape(())
        else:
            scale = e8m0_decode(self.take(name, "weight_scale", torch.uint8, grid))
        if tuple(scale.shape) != grid:
            raise CheckpointError(f"{self.where[name + '.weight_scale']}: {name}.weight_scale has shape "
                                  f"{tuple(scale.shape)}, expected {grid}")
        return FPQuantized(codes.contiguous(), scale.contiguous(), scheme.data_type, scheme.bits, gs, rows,
                           global_scale)

    def act_max(self, name: str, scheme: QuantScheme) -> torch.Tensor | None:
        if not scheme.quantizes_activations or scheme.act_dynamic:
            return None
        key = {"fp": "input_scale", "nv_fp": "input_global_scale"}.get(scheme.act_dtype)
        if key is None:
            raise CheckpointError(f"{self.at_config}: static {scheme.act_dtype} activations of {name} are not "
                                  f"supported")
        return ct.static_act_max(scheme, self.take(name, key, torch.float32, (1,)))


def read_compressed_tensors(folder: Path, config: dict[str, Any], in_features: dict[str, int] | None = None,
                            stream: bool = False) -> QuantizedCheckpoint:
    """Decode every quantized layer of a compressed-tensors checkpoint (``in_features``: the model's Linears);
    ``stream``: decode each when ``layers[name]`` is read (a ``LazyLayers``)."""
    r = _Reader(folder, config, in_features, stream)
    source = copy.copy(r)  # streamed: decoders read from their own view of the files, beside r's shrinking one
    if stream:
        source.tensors = ShardTensors(r.where)
    names = sorted({k[: -len(".weight_scale")] for k in r.tensors if k.endswith(".weight_scale")})
    layers: dict[str, Any] = {}
    decoders: dict[str, Any] = {}
    specs, act_schemes, act_max = {}, {}, {}
    fp_formats: dict[str, int] = {}
    for name in names:
        group = r.group_of(name)
        if group is None:
            raise CheckpointError(f"{r.where[name + '.weight_scale']}: {name} has quantized tensors, but the "
                                  f"compressed-tensors config ignores it or no config group targets it")
        _, _, scheme, fmt = group
        decode = source.decode_int if scheme.data_type == "int" else source.decode_fp
        if stream:
            r.out_in(name, fmt)  # widths and the packed tensor's presence, checked before any layer is decoded
            decoders[name] = partial(decode, name, scheme, fmt)
        else:
            layers[name] = decode(name, scheme, fmt)
        if scheme.data_type != "int":
            fp_formats[fmt] = fp_formats.get(fmt, 0) + 1
        if scheme.quantizes_activations:
            act_schemes[name] = scheme
            amax = r.act_max(name, scheme)
            if amax is not None:
                act_max[name] = amax
        for key in ct.LAYER_TENSORS:
            r.tensors.discard(f"{name}.{key}") if stream else r.tensors.pop(f"{name}.{key}", None)
        r.where.setdefault(f"{name}.qweight", r.where[f"{name}.weight_scale"])  # the key load.py names a layer by
        specs[name] = LayerSpec(scheme.bits, scheme.group_size, scheme.sym)
    if in_features is not None:
        stray = [n for n in in_features if n not in layers and n not in decoders and r.group_of(n) is not None]
        if stray:
            raise CheckpointError(f"{r.at_config}: the config quantizes {', '.join(stray[:6])} (its ignore list "
                                  f"does not name them) but the files hold them in float: compressed-tensors would "
                                  f"load uninitialised scales for them")
    for fmt, n in fp_formats.items():
        logger.info("%d %s layers: no FP4/FP8 kernel on CPU, so each is dequantized by its backend (packed_dequant: "
                    "in every forward; dequant: once at load)", n, fmt)
    all_layers = LazyLayers(decoders, {}) if stream else layers
    return QuantizedCheckpoint(folder, config, config["quantization_config"], all_layers, r.tensors,
                               Layout.COMPRESSED_TENSORS, ct.QUANT_METHOD, specs, r.where, act_schemes, act_max)
