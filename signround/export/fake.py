"""The ``fake`` format: a plain float checkpoint whose quantized layers hold their dequantized codes.

The codes come from ``ExportInput.weights`` (``QuantizedWeight.dequantize``), never from the model's
weights, which the block loop may or may not have overwritten.

Any scheme fits. It loads in any tool that reads the original architecture, with no quantization
support needed, which makes it the format for research and for evaluating schemes no kernel runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..formats import Format
from .io import float_state_dict, save_model_files, save_tensors
from .registry import ExportInput, register_writer

__all__ = ["write_fake", "fake_state_dict"]


def fake_state_dict(data: ExportInput) -> dict[str, torch.Tensor]:
    """The model's tensors with each planned quantized layer's weight replaced by its dequantized codes."""
    tensors = dict(float_state_dict(data.model))
    for p in data.plan.quantized():
        key = f"{p.name}.weight"
        if p.name not in data.weights:
            raise ValueError(f"format fake: layer {p.name} is planned as {p.scheme.short_name()} but has no quantized weight")
        w = data.weights[p.name].dequantize(tensors[key].dtype)  # (out, in)
        tensors[key] = w.t().contiguous() if p.conv1d else w  # Conv1D stores (in, out)
    return tensors


@register_writer(Format.FAKE)
def write_fake(data: ExportInput, folder: Path) -> None:
    tensors = fake_state_dict(data)
    save_tensors(tensors, folder)
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), None)
    save_model_files(data.model, data.tokenizer, folder, {}, dtype=dtype)
