"""Read a quantized checkpoint directory into per-layer QuantizedWeights plus the float tensors.

Strict by design: a tensor with the wrong shape, a quantized layer with a missing tensor or a
``quant_method``/``packing_format`` we do not know is an error naming the file and the tensor,
never a silent fallback to random weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..export.packing import unpack_bits
from ..quant.grouping import num_groups
from ..quant.types import QuantizedWeight

__all__ = ["LayerSpec", "QuantizedCheckpoint", "read_checkpoint", "read_config", "CheckpointError"]

PACKINGS = {  # packing_format -> offset added to stored zero points
    "auto_round:auto_gptq": 1,
    "auto_round:gptq": 1,
    "auto_round": 0,
    "auto_round:gptqmodel": 0,
}


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class LayerSpec:
    bits: int
    group_size: int
    sym: bool


@dataclass
class QuantizedCheckpoint:
    folder: Path
    config: dict[str, Any]  # config.json
    quant_config: dict[str, Any]
    layers: dict[str, QuantizedWeight]
    tensors: dict[str, torch.Tensor]  # every other tensor (float weights, biases, norms)


def read_config(folder: "str | Path") -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {folder}")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a model checkpoint: no config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def _tensor_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted({folder / f for f in weight_map.values()})
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors files in {folder}")
    return files


def _load_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, where = {}, {}
    for f in _tensor_files(folder):
        if not f.is_file():
            raise CheckpointError(f"shard {f} listed in the index is missing")
        try:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    tensors[k] = h.get_tensor(k)
                    where[k] = f.name
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise CheckpointError(f"cannot read {f}: {e} (truncated or corrupted file?)") from e
    return tensors, where


def _layer_specs(qc: dict[str, Any], names: list[str]) -> dict[str, LayerSpec | None]:
    """Per-layer bits/group_size/sym: exact extra_config names first, then regex keys, then the global config."""
    import re

    default = LayerSpec(int(qc.get("bits", 4)), int(qc.get("group_size", 128)), bool(qc.get("sym", True)))
    extra = qc.get("extra_config") or {}
    out: dict[str, LayerSpec | None] = {}
    for name in names:
        entry = extra.get(name)
        if entry is None:
            entry = next((v for k, v in extra.items() if k not in names and re.search(k, name)), None)
        if entry is None:
            out[name] = default
            continue
        bits = int(entry.get("bits", default.bits))
        if bits >= 16:
            out[name] = None
            continue
        out[name] = LayerSpec(bits, int(entry.get("group_size", default.group_size)), bool(entry.get("sym", default.sym)))
    return out


def _decode_layer(name: str, t: dict[str, torch.Tensor], where: dict[str, str], spec: LayerSpec,
                  zero_offset: int, in_features: int | None) -> QuantizedWeight:
    qweight, qzeros, scales = t[f"{name}.qweight"], t[f"{name}.qzeros"], t[f"{name}.scales"]
    n_groups, out_f = scales.shape
    rows = qweight.shape[0] * 32 // spec.bits
    if qweight.shape[1] != out_f:
        raise CheckpointError(f"{where[name + '.qweight']}: {name}.qweight has {qweight.shape[1]} columns, "
                              f"but {name}.scales says out_features={out_f}")
    # qweight may hold padded rows (a last group filled with zeros); the model's in_features says where to cut.
    in_f = in_features if in_features is not None else (rows if spec.group_size <= 0 else min(rows, n_groups * spec.group_size))
    if in_f > rows:
        raise CheckpointError(f"{where[name + '.qweight']}: {name}.qweight holds {rows} input rows, "
                              f"the model expects {in_f}")
    if spec.group_size > 0 and num_groups(spec.group_size, in_f) != n_groups:
        raise CheckpointError(f"{where[name + '.scales']}: {name}.scales has {n_groups} groups, but qweight holds "
                              f"{rows} input rows at group_size {spec.group_size}")
    expected_z = (n_groups, out_f * spec.bits // 32)
    if tuple(qzeros.shape) != expected_z:
        raise CheckpointError(f"{where[name + '.qzeros']}: {name}.qzeros has shape {tuple(qzeros.shape)}, "
                              f"expected {expected_z} for {spec.bits}-bit zeros of {out_f} outputs")
    gidx = t.get(f"{name}.g_idx")
    if gidx is not None and spec.group_size > 0:
        trivial = torch.arange(gidx.numel()) // spec.group_size
        if not torch.equal(gidx.to(torch.int64).cpu(), trivial):
            raise CheckpointError(f"{name}.g_idx is not the trivial i // group_size (act-order checkpoints are not supported)")
    codes = unpack_bits(qweight, spec.bits, dim=0, length=in_f).t().contiguous()  # (out, in)
    zeros = unpack_bits(qzeros, spec.bits, dim=1, length=out_f).t().to(torch.int16) + zero_offset  # (out, G)
    gs = in_f if spec.group_size <= 0 else spec.group_size
    return QuantizedWeight(codes=codes, scale=scales.t().float().contiguous(), zero=zeros.clamp(0, 255).to(torch.uint8),
                           bits=spec.bits, group_size=gs, sym=spec.sym)


def read_checkpoint(folder: "str | Path", in_features: dict[str, int] | None = None) -> QuantizedCheckpoint:
    """Decode every packed layer; ``in_features`` (layer -> width, from the model) resolves padded rows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {folder}")
    config = read_config(folder)
    qc = config.get("quantization_config")
    if not qc:
        raise CheckpointError(f"{folder / 'config.json'} has no quantization_config: not a quantized checkpoint")
    method = qc.get("quant_method")
    if method != "auto-round":
        raise CheckpointError(f"{folder / 'config.json'}: quant_method {method!r} is not supported (supported: auto-round)")
    packing = qc.get("packing_format", "auto_round:auto_gptq")
    if packing not in PACKINGS:
        raise CheckpointError(f"{folder / 'config.json'}: packing_format {packing!r} is not supported "
                              f"(supported: {', '.join(PACKINGS)})")
    if qc.get("data_type", "int") != "int":
        raise CheckpointError(f"{folder / 'config.json'}: data_type {qc.get('data_type')!r} is not supported (int only)")
    tensors, where = _load_tensors(folder)
    names = sorted({k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")})
    specs = _layer_specs(qc, names)
    layers = {}
    for name in names:
        spec = specs[name]
        if spec is None:
            raise CheckpointError(f"{where[name + '.qweight']}: {name} has packed weights but extra_config says 16 bits")
        missing = [f"{name}.{k}" for k in ("qzeros", "scales") if f"{name}.{k}" not in tensors]
        if missing:
            raise CheckpointError(f"{where[name + '.qweight']}: quantized layer {name} lacks {', '.join(missing)}")
        width = (in_features or {}).get(name)
        layers[name] = _decode_layer(name, tensors, where, spec, PACKINGS[packing], width)
        for k in ("qweight", "qzeros", "scales", "g_idx"):
            tensors.pop(f"{name}.{k}", None)
    return QuantizedCheckpoint(folder, config, qc, layers, tensors)
