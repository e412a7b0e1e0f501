"""The ``fake`` format: a plain float checkpoint whose quantized layers hold their dequantized codes.

Any scheme fits. It loads in any tool that reads the original architecture, with no quantization
support needed, which makes it the format for research and for evaluating schemes no kernel runs.
"""

from __future__ import annotations

from pathlib import Path

from ..formats import Format
from .io import float_state_dict, save_model_files, save_tensors
from .registry import ExportInput, register_writer

__all__ = ["write_fake"]


@register_writer(Format.FAKE)
def write_fake(data: ExportInput, folder: Path) -> None:
    tensors = float_state_dict(data.model)
    save_tensors(tensors, folder)
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), None)
    save_model_files(data.model, data.tokenizer, folder, {}, dtype=dtype)
