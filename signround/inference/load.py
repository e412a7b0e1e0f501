"""``load_quantized``: a runnable transformers model from an auto_round, GPTQ or AWQ checkpoint.

The model skeleton is built without allocating its weights, every quantized Linear is replaced, one at a
time as its tensors are read from the shards (``packed_stream.py``), by the module of the backend selected for it (``backends.py``; one log line per group of like layers says
which and why), and every other tensor is assigned from the files (``assign.py``). A float checkpoint
takes the same path without the packed layers. A missing, extra, wrong-shaped, wrong-dtype or
non-finite tensor is an error naming file and tensor: a checkpoint never half-loads into random weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..model.loading import resolve_dtype
from ..plan import is_linear, linear_shape
from ..record import RUN_FILE, read_run
from ..schemes import QuantScheme
from ..tune.act_inputs import attach_quantized_inputs
from .assign import assign_tensors, check_tensors
from .backends import BACKENDS, backend_names, select_backend
from .checkpoint import CheckpointError, QuantizedCheckpoint, read_checkpoint, read_config, tensor_locations
from .packed_stream import ShardTensors

__all__ = ["load_quantized", "model_skeleton", "recorded_input_quantization"]

logger = logging.getLogger(__name__)


def _config_dtype(config: dict) -> torch.dtype:
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    resolved = resolve_dtype(name)
    return torch.float32 if resolved == "auto" else resolved


def _set_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def model_skeleton(folder: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, int]]:
    """The checkpoint's architecture with weights on the meta device, and each Linear's in_features."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: transformers cannot read it as a model config: {e}") from e
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, {n: linear_shape(m)[1] for n, m in model.named_modules() if is_linear(m)}


def _replace_quantized(model: torch.nn.Module, ckpt: QuantizedCheckpoint, widths: dict[str, int], device: str,
                       dtype: torch.dtype, keep_codes: bool, backend: str | None) -> None:
    """Swap every packed layer's Linear for the module of its backend (its bias taken out of ``ckpt.tensors``)."""
    groups: dict[tuple, list[str]] = {}
    for name, qw in ckpt.layers.items():
        if name not in widths:
            raise CheckpointError(f"{ckpt.file_of(name)}: quantized tensor {name}.qweight matches no linear "
                                  f"layer of {type(model).__name__}")
        module = model.get_submodule(name)
        expected = linear_shape(module)
        if tuple(qw.shape) != tuple(expected):
            raise CheckpointError(f"{ckpt.file_of(name)}: {name} decodes to shape {tuple(qw.shape)}, the "
                                  f"model expects {expected}")
        bias = ckpt.tensors.pop(f"{name}.bias", None)
        if bias is None and getattr(module, "bias", None) is not None:
            raise CheckpointError(f"{ckpt.file_of(name)}: quantized layer {name} has a bias in the model but "
                                  f"no {name}.bias tensor")
        try:
            chosen, why = select_backend(ckpt.layout, qw, device, backend, dtype)
        except ValueError as e:
            raise ValueError(f"{name} ({qw.bits}-bit, group {qw.group_size}): {e}") from None
        _set_module(model, name, chosen.build(qw, bias, dtype, keep_codes))
        groups.setdefault((chosen.name, qw.bits, qw.group_size, qw.sym, why), []).append(name)
    for (name, bits, gs, sym, why), layers in groups.items():
        logger.info("backend %s for %d %s layers (%d-bit, group %d, %s): %s", name, len(layers), ckpt.layout.value,
                    bits, gs, "sym" if sym else "asym", why)


def recorded_input_quantization(folder: Path) -> tuple[dict[str, QuantScheme], dict[str, torch.Tensor]]:
    """The quantized inputs that signround.json records for a checkpoint whose config cannot say (fake format):
    {layer: scheme} of the layers with activation quantization, and the static ones' calibrated maxima."""
    run = read_run(folder)
    layers = (run.get("plan") or {}).get("layers") or {}
    schemes = {}
    for name, entry in layers.items():
        fields = entry.get("scheme") or {}
        if fields.get("act_bits", 16) < 16 and fields.get("bits", 16) < 16:
            try:
                schemes[name] = QuantScheme(**fields)
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{folder / RUN_FILE}: the scheme of layer {name} is not valid: {e}") from e
    act_max = {n: torch.tensor(float(v)) for n, v in (run.get("act_max") or {}).items()}
    return schemes, act_max


def load_quantized(path: "str | Path", dtype: "str | torch.dtype | None" = None, device: str = "cpu",
                   keep_codes: bool = False, backend: str | None = None) -> torch.nn.Module:
    """Load an exported directory (auto_round, auto_gptq, auto_awq or fake) as a transformers model in eval mode.

    ``backend`` forces the inference backend of every quantized layer (see ``backends.BACKENDS``);
    by default each layer gets the highest-priority installed backend that can run it, which keeps its
    codes packed (the int4/int8 kernels at ``dtype=bfloat16``, else dequantized in each forward);
    ``backend="dequant"`` dequantizes once at load. A float
    checkpoint (no ``quantization_config``) is read by the same strict reader, not ``from_pretrained``.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(backend_names())}")
    folder = Path(path)
    config_dict = read_config(folder)
    torch_dtype = _config_dtype(config_dict) if dtype in (None, "auto") else resolve_dtype(dtype)
    quantized = bool(config_dict.get("quantization_config"))
    model, widths = model_skeleton(folder, torch_dtype)
    expected = model.state_dict()  # meta tensors: names, shapes and dtypes the checkpoint must match
    model_name = type(model).__name__
    if quantized:
        ckpt = read_checkpoint(folder, widths, stream=True)  # one layer's tensors and codes at a time
        tensors, where = ckpt.tensors, ckpt.where
        check_tensors(tensors, where, expected, model_name, quantized=True)
        _replace_quantized(model, ckpt, widths, device, torch_dtype, keep_codes, backend)
    else:
        logger.info("%s has no quantization_config: loading it as a float (fake-format) checkpoint", folder)
        where = tensor_locations(folder)
        tensors = ShardTensors(where)  # read (and cast) from the files by assign_tensors, a few MiB at a time
        check_tensors(tensors, where, expected, model_name, quantized=False)
    assign_tensors(model, tensors, where, folder, torch_dtype)
    schemes, act_max = (ckpt.act_schemes, ckpt.act_max) if quantized else recorded_input_quantization(folder)
    attach_quantized_inputs(model, schemes, act_max)
    if quantized:
        logger.info("loaded %d quantized layers (%s checkpoint, %s layout) from %s", len(ckpt.layers), ckpt.method,
                    ckpt.layout.value, folder)
    return model.to(device).eval()
