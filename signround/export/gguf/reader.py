"""Read a GGUF file written for a model back into that model's HF state dict (our own loader).

The inverse of ``writer.model_tensors``: GGUF names map back to HF names, llama's Q/K row
permutation is undone, gemma's ``1 + w`` norm offset is subtracted, and every tensor is decoded
with our own dequantizers (``signround.quant.gguf.decode_tensor``), so a round trip through a file
checks the writer and the packers together.
"""

from __future__ import annotations

import logging
import os

import gguf
import numpy as np
import torch

from ...quant.gguf import GGMLType, decode_tensor
from ...formats.gguf_tensors import model_tensors

__all__ = ["read_gguf_tensors", "load_gguf_state_dict"]

logger = logging.getLogger(__name__)


def read_gguf_tensors(path: str | os.PathLike) -> dict[str, tuple[GGMLType, tuple[int, ...], np.ndarray]]:
    """``{gguf name: (type, torch-order shape, raw data)}`` of every tensor in the file."""
    reader = gguf.GGUFReader(os.fspath(path))
    out = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # ggml ne[] is innermost-first
        out[t.name] = (GGMLType(int(t.tensor_type)), shape, np.asarray(t.data))
    return out


def load_gguf_state_dict(path: str | os.PathLike, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The HF state dict (float32) that the GGUF file at ``path`` holds for ``model``'s architecture."""
    stored = read_gguf_tensors(path)
    state = {}
    for src in model_tensors(model):
        if src.gguf_name not in stored:
            raise ValueError(f"{os.fspath(path)} has no tensor {src.gguf_name} (for {src.hf_name})")
        qtype, shape, data = stored[src.gguf_name]
        if shape != tuple(src.tensor.shape):
            raise ValueError(f"{src.gguf_name}: file shape {shape}, model shape {tuple(src.tensor.shape)}")
        raw = torch.from_numpy(np.ascontiguousarray(data).view(np.uint8).reshape(shape[0], -1).copy())
        t = decode_tensor(raw, qtype, (shape[0], int(np.prod(shape[1:])) if len(shape) > 1 else 1))
        t = t.reshape(shape)
        if src.row_permutation is not None:
            t = t[torch.argsort(src.row_permutation)]
        if src.add:
            t = t - src.add
        state[src.hf_name] = t
    return state
