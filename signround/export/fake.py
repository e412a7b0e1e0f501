"""The ``fake`` format: a plain float checkpoint whose quantized layers hold their dequantized codes.

The codes come from the layers' ``QuantizedWeight`` (``dequantize``), never from the model's weights,
which the block loop may or may not have overwritten.

Any scheme fits. It loads in any tool that reads the original architecture, with no quantization
support needed, which makes it the format for research and for evaluating schemes no kernel runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..formats import Format
from ..plan import LayerPlan
from ..quant.types import QuantizedWeight
from .registry import ExportInput, register_writer
from .stream import SafetensorsSink, TensorLayout

__all__ = ["fake_sink", "fake_weight"]


def fake_weight(plan: LayerPlan, qw: QuantizedWeight, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The dequantized codes in the model's dtype and the module's own layout (Conv1D stores (in, out))."""
    w = qw.dequantize(dtype)  # (out, in)
    return {"weight": w.t().contiguous() if plan.conv1d else w}


@register_writer(Format.FAKE)
def fake_sink(data: ExportInput, folder: Path) -> SafetensorsSink:
    layout = TensorLayout(fake_weight, lambda plan, settings: None, quantized_bias_dtype=None, floats_first=False)
    return SafetensorsSink(data, folder, layout)
