"""Convert a GPTQ (v1/v2) or AWQ (GEMM) checkpoint to the auto_round format, keeping every quantized value.

The source is decoded to ``QuantizedWeight``s (integer codes, scales, zero points exactly as stored;
``inference/checkpoint.py``) and re-packed by the auto_round writer's own functions, so the result
dequantizes to bit-identical weights. Float tensors, the tokenizer and the generation config are
carried over unchanged. GPTQ act-order checkpoints (``desc_act=true`` with a non-trivial ``g_idx``)
are refused with the layer name: their groups are not contiguous, which auto_round cannot express.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch

from .export.auto_round import auto_round_packing, auto_round_quantization_config, packed_layer_tensors, packed_state_dict
from .errors import OutputPathError
from .export.io import atomic_output_dir, check_output_target, save_tensors
from .inference.checkpoint import QuantizedCheckpoint, read_checkpoint, read_config
from .inference.layouts import CheckpointError
from .inference.load import model_skeleton
from .model.arch import arch_facts
from .plan import LayerPlan, QuantPlan, linear_shape, is_linear
from .record import read_run, write_run
from .schemes import KEEP, QuantScheme

__all__ = ["convert_to_auto_round", "checkpoint_plan"]

logger = logging.getLogger(__name__)

_NOT_COPIED = re.compile(r"(\.safetensors|\.bin|\.pt|\.pth|model\.safetensors\.index\.json|^config\.json|"
                         r"^quantize_config\.json|^quant_log\.json|^signround\.json)$")


def _scheme(bits: int, group_size: int, sym: bool) -> QuantScheme:
    return QuantScheme(bits=bits, group_size=-1 if group_size <= 0 else group_size, sym=sym)


def checkpoint_plan(model: torch.nn.Module, ckpt: QuantizedCheckpoint) -> QuantPlan:
    """The plan a checkpoint implies: its packed layers with their schemes, every other Linear in float."""
    arch = arch_facts(model)
    block_re = re.compile(rf"^{re.escape(arch.blocks)}\.(\d+)\.")
    counts: dict[QuantScheme, int] = {}
    layers: dict[str, LayerPlan] = {}
    for name, module in model.named_modules():
        if not is_linear(module):
            continue
        m = block_re.match(name)
        spec = ckpt.specs.get(name)
        scheme = KEEP if spec is None else _scheme(spec.bits, spec.group_size, spec.sym)
        reason = f"{ckpt.method} checkpoint" if spec is not None else f"float in the {ckpt.method} checkpoint"
        layers[name] = LayerPlan(name, linear_shape(module), scheme, reason, int(m.group(1)) if m else None)
        if spec is not None:
            counts[scheme] = counts.get(scheme, 0) + 1
    if not counts:
        raise CheckpointError(f"{ckpt.folder}: no quantized layer found")
    default = max(counts, key=lambda s: counts[s])  # the most common scheme is the global one
    return QuantPlan(layers, default, arch.blocks, len(model.get_submodule(arch.blocks)), arch.lm_head)


def _check_zero_range(ckpt: QuantizedCheckpoint) -> None:
    for name, qw in ckpt.layers.items():
        top = int(qw.zero.max())
        if top >= 2**qw.bits:
            raise CheckpointError(
                f"{ckpt.folder}: {name}.qzeros stores {top - 1} in the GPTQ v1 'zero - 1' convention, i.e. a zero point of "
                f"{top}, outside the {qw.bits}-bit range; this checkpoint's asym zero points of 0 were stored wrapped and "
                f"cannot be converted exactly")


def _check_apart(folder: Path, target: Path) -> None:
    """The output may be neither the source, nor inside it, nor hold it (replacing it would delete the source)."""
    src, out = folder.resolve(), target.resolve()
    if out == src or src in out.parents:
        raise OutputPathError(f"output_dir {target} is inside the source checkpoint {folder}; choose a directory "
                              f"outside it")
    if out in src.parents:
        raise OutputPathError(f"output_dir {target} contains the source checkpoint {folder}; choose another directory")


def convert_to_auto_round(source: "str | Path", output_dir: "str | Path", overwrite: bool = False) -> Path:
    """Write ``source`` (a GPTQ or AWQ checkpoint directory) to ``output_dir`` in the auto_round format.

    ``output_dir`` is the output itself: new, empty, or (with ``overwrite``) a previous signround output.
    """
    folder, target = Path(source), Path(output_dir)
    _check_apart(folder, target)
    check_output_target(target, overwrite)  # before reading the source: a refused output costs nothing
    config = read_config(folder)
    model, widths = model_skeleton(folder, torch.float32)
    ckpt = read_checkpoint(folder, widths)
    _check_zero_range(ckpt)
    plan = checkpoint_plan(model, ckpt)
    packing, offset = auto_round_packing(plan)
    tensors = packed_state_dict(ckpt.tensors, ckpt.layers, lambda qw: packed_layer_tensors(qw, offset))
    config = dict(config, quantization_config=auto_round_quantization_config(plan, packing, {}))
    with atomic_output_dir(target, overwrite) as tmp:
        save_tensors(tensors, tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for f in sorted(folder.iterdir()):
            if f.is_file() and not _NOT_COPIED.search(f.name):
                shutil.copy2(f, tmp / f.name)
        run = {"format": "auto_round", "converted_from": str(folder), "source_method": ckpt.method,
               "source_layout": ckpt.layout.value, "plan": plan.to_dict()}
        previous = read_run(folder)
        if previous:
            run["source_model"] = previous.get("source_model", "")
        write_run(tmp, run)
    logger.info("converted %d %s layers (%s layout) from %s to auto_round (%s) in %s", len(ckpt.layers), ckpt.method,
                ckpt.layout.value, folder, packing, target)
    return target
