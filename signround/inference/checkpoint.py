"""Read a quantized checkpoint directory into per-layer QuantizedWeights plus the float tensors.

Three kinds of ``quantization_config`` are understood, each mapped to a tensor layout (``layouts.py``)
and a per-layer scheme resolver:

| quant_method | layout from | per-layer overrides |
|---|---|---|
| ``auto-round`` | ``packing_format`` (``auto_round:auto_gptq``, ``auto_round``, ``auto_round:auto_awq``...) | ``extra_config``: exact names, then regex (``re.search``) |
| ``gptq`` | ``checkpoint_format`` (``gptq`` = v1 ``zero - 1``, ``gptq_v2`` = raw zeros) | GPTQModel ``dynamic``: first ``re.match`` in order; ``-:`` = float |
| ``awq`` | ``version`` (``gemm`` only) | ``modules_to_not_convert`` (substrings) = float |

Strict by design: a tensor with the wrong shape, a quantized layer with a missing tensor or a
``quant_method``/``packing_format`` we do not know is an error naming the file and the tensor,
never a silent fallback to random weights.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import safe_open

from ..quant.types import QuantizedWeight
from .auto_round_fp import FP_PACKINGS, FPLayers, input_schemes, is_fp_config, take_fp_layers
from .layouts import CheckpointError, LayerSpec, Layout, decode_layer
from .packed_stream import LazyLayers, ShardTensors

__all__ = ["LayerSpec", "QuantizedCheckpoint", "QuantConfigView", "read_checkpoint", "read_config", "read_tensors",
           "tensor_locations", "tensor_files", "has_safetensors", "parse_quant_config", "CheckpointError",
           "AUTO_ROUND_PACKINGS", "QUANT_METHODS"]

INDEX_FILE = "model.safetensors.index.json"

AUTO_ROUND_PACKINGS: dict[str, Layout] = {  # auto-round packing_format -> tensor layout
    "auto_round:auto_gptq": Layout.GPTQ,
    "auto_round:gptq": Layout.GPTQ,
    "auto_round": Layout.GPTQ_RAW_ZERO,
    "auto_round:gptqmodel": Layout.GPTQ_RAW_ZERO,
    "auto_round:auto_awq": Layout.AWQ_GEMM,
    **dict.fromkeys(FP_PACKINGS, Layout.GPTQ_RAW_ZERO),  # FP checkpoints: FP layers in auto_round_fp.py, int ones raw
}
GPTQ_CHECKPOINT_FORMATS: dict[str, Layout] = {"gptq": Layout.GPTQ, "gptq_v2": Layout.GPTQ_RAW_ZERO}
AWQ_VERSIONS: dict[str, Layout] = {"gemm": Layout.AWQ_GEMM}

Resolver = Callable[[list[str]], "dict[str, LayerSpec | None]"]


@dataclass(frozen=True)
class QuantConfigView:
    """A ``quantization_config`` reduced to what decoding needs: the layout and each layer's scheme."""

    method: str  # auto-round, gptq or awq
    layout: Layout
    default: LayerSpec
    resolve: Resolver  # layer names -> their spec (None: kept in float)
    needs_g_idx: bool = False  # act-order GPTQ: only a (trivial) g_idx proves the groups are static


@dataclass
class QuantizedCheckpoint:
    folder: Path
    config: dict[str, Any]  # config.json
    quant_config: dict[str, Any]
    layers: dict[str, QuantizedWeight]
    tensors: dict[str, torch.Tensor]  # every other tensor (float weights, biases, norms)
    layout: Layout
    method: str
    specs: dict[str, LayerSpec]  # what the config says about each packed layer (group_size -1: per row)
    where: dict[str, str] = field(default_factory=dict)  # tensor name -> path of its file (for messages)
    # layers whose inputs the checkpoint quantizes: module name -> its scheme (act_* fields), and the calibrated
    # max |input| (0-d float32) of those with static activations, read back from input_scale / input_global_scale
    act_schemes: dict[str, Any] = field(default_factory=dict)
    act_max: dict[str, torch.Tensor] = field(default_factory=dict)

    def file_of(self, layer: str) -> str:
        """The file holding a packed layer's codes (for messages)."""
        return next((self.where[f"{layer}.{k}"] for k in ("qweight", "weight_packed", "weight")
                     if f"{layer}.{k}" in self.where), "?")


def read_config(folder: "str | Path") -> dict[str, Any]:
    """config.json of a checkpoint directory as a dict, or a CheckpointError naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {folder}")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a model checkpoint: no config.json")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def has_safetensors(folder: Path) -> bool:
    return (folder / INDEX_FILE).is_file() or any(folder.glob("*.safetensors"))


def tensor_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards its index names, else every ``*.safetensors``."""
    index = folder / INDEX_FILE
    if index.is_file():
        data = _read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no \"weight_map\" object")
        return sorted({folder / f for f in weight_map.values()})
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors files in {folder}")
    return files


@contextmanager
def _opened(f: Path) -> Iterator[Any]:
    """A safetensors file opened for reading; any failure (truncated, corrupted) is a CheckpointError naming it."""
    if not f.is_file():
        raise CheckpointError(f"shard {f} listed in the index is missing")
    try:
        with safe_open(str(f), framework="pt") as h:
            yield h
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"cannot read {f}: {e} (truncated or corrupted file?)") from e


def tensor_locations(folder: Path) -> dict[str, str]:
    """tensor name -> the path of the file holding it, from the file headers only (checks every file opens)."""
    where = {}
    for f in tensor_files(folder):
        with _opened(f) as h:
            where.update(dict.fromkeys(h.keys(), str(f)))
    return where


def read_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of the checkpoint, and tensor name -> the path of its file (for messages)."""
    tensors, where = {}, {}
    for f in tensor_files(folder):
        with _opened(f) as h:
            for k in h.keys():
                tensors[k] = h.get_tensor(k)
                where[k] = str(f)
    return tensors, where


def _choice(table: dict[str, Layout], value: str, key: str, where: Path) -> Layout:
    if value not in table:
        raise CheckpointError(f"{where}: {key} {value!r} is not supported (supported: {', '.join(table)})")
    return table[value]


def _int(qc: dict[str, Any], keys: tuple[str, ...], default: int, where: Path) -> int:
    for k in keys:
        if k in qc and qc[k] is not None:
            try:
                return int(qc[k])
            except (TypeError, ValueError):
                raise CheckpointError(f"{where}: quantization_config {k}={qc[k]!r} is not an integer") from None
    return default


def _override(default: LayerSpec, entry: dict[str, Any]) -> LayerSpec | None:
    bits = int(entry.get("bits", default.bits))
    if bits >= 16:
        return None
    return LayerSpec(bits, int(entry.get("group_size", default.group_size)), bool(entry.get("sym", default.sym)))


def _auto_round(qc: dict[str, Any], where: Path) -> QuantConfigView:
    layout = _choice(AUTO_ROUND_PACKINGS, qc.get("packing_format", "auto_round:auto_gptq"), "packing_format", where)
    if qc.get("data_type", "int") != "int" and not is_fp_config(qc):
        raise CheckpointError(f"{where}: data_type {qc.get('data_type')!r} is not supported (int, or an FP type)")
    gs_keys = () if isinstance(qc.get("group_size"), list) else ("group_size",)  # [rows, cols]: FP8 blocks
    default = LayerSpec(_int(qc, ("bits",), 4, where), _int(qc, gs_keys, 128, where), bool(qc.get("sym", True)))
    extra = qc.get("extra_config") or {}

    def resolve(names: list[str]) -> dict[str, LayerSpec | None]:
        out: dict[str, LayerSpec | None] = {}
        for name in names:  # an exact name first, then the first regex key (keys naming other layers are not regexes)
            entry = extra.get(name)
            if entry is None:
                entry = next((v for k, v in extra.items() if k not in names and re.search(k, name)), None)
            out[name] = default if entry is None else _override(default, entry)
        return out

    return QuantConfigView("auto-round", layout, default, resolve)


def _gptq(qc: dict[str, Any], where: Path) -> QuantConfigView:
    layout = _choice(GPTQ_CHECKPOINT_FORMATS, qc.get("checkpoint_format") or qc.get("format") or "gptq",
                     "checkpoint_format", where)
    default = LayerSpec(_int(qc, ("bits",), 4, where), _int(qc, ("group_size",), 128, where), bool(qc.get("sym", True)))
    rules = []
    for key, entry in (qc.get("dynamic") or {}).items():
        negative = key.startswith("-:")
        pattern = key[2:] if key[:2] in ("-:", "+:") else key
        try:
            rules.append((re.compile(pattern), None if negative else _override(default, entry or {})))
        except re.error as e:
            raise CheckpointError(f"{where}: dynamic key {key!r} is not a valid regex: {e}") from None

    def resolve(names: list[str]) -> dict[str, LayerSpec | None]:
        return {n: next((spec for rx, spec in rules if rx.match(n)), default) for n in names}

    return QuantConfigView("gptq", layout, default, resolve, needs_g_idx=bool(qc.get("desc_act", False)))


def _awq(qc: dict[str, Any], where: Path) -> QuantConfigView:
    layout = _choice(AWQ_VERSIONS, str(qc.get("version", "gemm")).lower(), "AWQ version", where)
    bits = _int(qc, ("bits", "w_bit"), 4, where)
    if bits != 4:
        raise CheckpointError(f"{where}: AWQ bits {bits} is not supported (the GEMM layout holds 4-bit weights)")
    default = LayerSpec(4, _int(qc, ("group_size", "q_group_size"), 128, where), not qc.get("zero_point", True))
    skip = [m for m in (qc.get("modules_to_not_convert") or []) if m]

    def resolve(names: list[str]) -> dict[str, LayerSpec | None]:
        return {n: None if any(m in n for m in skip) else default for n in names}

    return QuantConfigView("awq", layout, default, resolve)


QUANT_METHODS: dict[str, Callable[[dict[str, Any], Path], QuantConfigView]] = {
    "auto-round": _auto_round,
    "intel/auto-round": _auto_round,
    "gptq": _gptq,
    "awq": _awq,
}


def parse_quant_config(config: dict[str, Any], folder: Path) -> QuantConfigView:
    """The layout and per-layer schemes of a config.json's ``quantization_config``, or a CheckpointError."""
    where = folder / "config.json"
    qc = config.get("quantization_config")
    if not qc:
        raise CheckpointError(f"{where} has no quantization_config: not a quantized checkpoint")
    if not isinstance(qc, dict):
        raise CheckpointError(f"{where}: quantization_config must be a JSON object, got {type(qc).__name__}")
    method = str(qc.get("quant_method", "")).lower()
    if method not in QUANT_METHODS:
        raise CheckpointError(f"{where}: quant_method {qc.get('quant_method')!r} is not supported "
                              f"(supported: {', '.join(QUANT_METHODS)})")
    return QUANT_METHODS[method](qc, where)


def read_checkpoint(folder: "str | Path", in_features: dict[str, int] | None = None,
                    stream: bool = False) -> QuantizedCheckpoint:
    """Decode every packed layer; ``in_features`` (layer -> width, from the model) resolves padded rows.

    ``stream``: tensors are read from their shard when used and int layers decoded when ``layers[name]``
    is read (``packed_stream.py``), so a loader building one module per layer holds one layer at a time;
    their errors then surface at that read; auto_round FP layers too (``take_fp_layers``), and
    compressed-tensors layers (``compressed_tensors.py``)."""
    folder = Path(folder)
    config = read_config(folder)
    qc = config.get("quantization_config")
    if isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() == "compressed-tensors":
        from .compressed_tensors import read_compressed_tensors  # its own reader: per-layer formats, FP results

        return read_compressed_tensors(folder, config, in_features, stream)
    view = parse_quant_config(config, folder)
    if stream:
        where = tensor_locations(folder)
        tensors, source = ShardTensors(where), ShardTensors(where)
    else:
        tensors, where = read_tensors(folder)
    fp = take_fp_layers(config["quantization_config"], tensors, where, folder / "config.json", in_features,
                        source if stream else None) if view.method == "auto-round" else FPLayers()
    names = sorted({k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")})
    orphans = sorted(k for k in tensors if k.endswith((".qzeros", ".scales")) and k.rsplit(".", 1)[0] not in names)
    if orphans:
        raise CheckpointError(f"{where[orphans[0]]}: {orphans[0]} has no matching .qweight (truncated checkpoint?)")
    specs = view.resolve(names)
    layers: dict = {}
    decoders = {}
    for name in names:
        spec = specs[name]
        if spec is None:
            raise CheckpointError(f"{where[name + '.qweight']}: {name} has packed weights, but the {view.method} "
                                  f"quantization_config says it stays in float")
        if view.needs_g_idx and f"{name}.g_idx" not in tensors:
            raise CheckpointError(f"{where[name + '.qweight']}: the config says desc_act=true (act-order) but {name} "
                                  f"has no g_idx, so its group order is unknown")
        if stream:
            decoders[name] = partial(decode_layer, view.layout, name, source, where, spec, (in_features or {}).get(name))
        else:
            layers[name] = decode_layer(view.layout, name, tensors, where, spec, (in_features or {}).get(name))
        for k in ("qweight", "qzeros", "scales", "g_idx"):
            tensors.discard(f"{name}.{k}") if stream else tensors.pop(f"{name}.{k}", None)
    if stream:
        layers = decoders  # type: ignore[assignment]  (names for the checks below; LazyLayers at the end)
    int_specs = {n: s for n, s in specs.items() if n in layers and s is not None}
    layout = Layout.AUTO_ROUND_FP if (fp.layers or fp.decoders) and not layers else view.layout
    if view.method == "auto-round":  # int layers with quantized inputs (act_* keys), beside the FP ones
        fp.act_schemes.update(input_schemes(config["quantization_config"], sorted(layers), str(folder / "config.json")))
    all_layers = LazyLayers({**decoders, **fp.decoders}, fp.layers) if stream else {**layers, **fp.layers}
    return QuantizedCheckpoint(folder, config, config["quantization_config"], all_layers, tensors, layout,
                               view.method, int_specs, where, fp.act_schemes, fp.act_max)
