"""Assign a checkpoint's float tensors to a model skeleton, strictly: nothing is left to random init.

Both load paths end here (a float fake-format checkpoint, and the non-packed tensors of a packed one):
every tensor must name a parameter of the skeleton, with its shape, a floating dtype where the model
holds floats, and only finite values; every parameter must get a tensor (a tied lm_head may share the
embeddings' one). Each failure is a ``CheckpointError`` naming the file and the tensor. Tensors streamed
from their files (``ShardTensors``) are checked and cast a few MiB of rows at a time, so loading holds
each tensor once, in the load dtype.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.arch import tied_embeddings
from .layouts import CheckpointError, check_finite
from .packed_stream import ShardTensors

__all__ = ["check_tensors", "assign_tensors", "PACKED_SUFFIXES"]

PACKED_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")  # tensors of a packed layer, in every layout


def _names(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def _extra_hint(extra: list[str], quantized: bool) -> str:
    if quantized or not any(k.rsplit(".", 1)[-1] in PACKED_SUFFIXES for k in extra):
        return ""
    return ("; qweight/scales present but config.json has no quantization_config (restore it from the export, "
            "or re-export the model)")


def check_tensors(tensors: dict[str, torch.Tensor], where: dict[str, str], expected: dict[str, torch.Tensor],
                  model_name: str, quantized: bool) -> None:
    """Every tensor matches a model entry of ``expected`` (the skeleton's state dict) in name, shape, dtype kind,
    and holds finite values. ``quantized``: whether config.json has a quantization_config (for the hint)."""
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{where[extra[0]]}: {len(extra)} tensor(s) match no parameter of {model_name}: "
                              f"{_names(extra)}{_extra_hint(extra, quantized)}")
    for name in tensors:
        want, at = expected[name], f"{where[name]}: {name}"
        shape, dtype = tensors.header(name) if isinstance(tensors, ShardTensors) else \
            (tuple(tensors[name].shape), tensors[name].dtype)
        if tuple(shape) != tuple(want.shape):
            raise CheckpointError(f"{at} has shape {tuple(shape)}, {model_name} expects {tuple(want.shape)}")
        floating = dtype is not None and dtype.is_floating_point
        if want.is_floating_point() != floating:
            kind = "a floating-point tensor" if want.is_floating_point() else f"{want.dtype}"
            raise CheckpointError(f"{at} is {dtype}, {model_name} expects {kind}")
        if floating:
            _check_finite(tensors, name, at)


def _check_finite(tensors: dict[str, torch.Tensor], name: str, at: str) -> None:
    if not isinstance(tensors, ShardTensors):
        return check_finite(tensors[name], at)
    bad = total = 0
    for chunk in tensors.row_chunks(name):
        total += chunk.numel()
        if not bool(torch.isfinite(chunk).all()):
            bad += int((~torch.isfinite(chunk)).sum())
    if bad:
        raise CheckpointError(f"{at} holds {bad} NaN/inf value(s) of {total} (damaged or badly exported file)")


def assign_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: dict[str, str], folder: Path,
                   dtype: torch.dtype) -> None:
    """Put ``tensors`` (already checked) into the meta ``model``, cast to ``dtype``; fail on any parameter left out."""
    cast = {}
    for k in list(tensors):
        if isinstance(tensors, ShardTensors):
            shape, file_dtype = tensors.header(k)
            cast[k] = tensors.read_as(k, dtype) if file_dtype is not None and file_dtype.is_floating_point \
                else tensors[k]
        else:
            v = tensors[k]
            cast[k] = v.to(dtype) if v.is_floating_point() else v
    model.load_state_dict(cast, strict=False, assign=True)
    if tied_embeddings(model):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    missing += [n for n, b in model.named_buffers() if b is not None and b.is_meta]
    if missing:
        files = ", ".join(sorted({Path(f).name for f in where.values()})) or "no tensor file"
        raise CheckpointError(f"{folder} ({files}): no tensor for {_names(missing)} (truncated or incomplete "
                              f"checkpoint?)")
