"""Writing a checkpoint directory safely: a temporary sibling directory renamed into place at the end.

A crash or an error leaves no half-written directory that looks complete. Tensors go to
safetensors shards (with an index when there is more than one), plus config, generation config
and tokenizer files.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file

__all__ = ["atomic_output_dir", "save_tensors", "save_model_files", "float_state_dict", "DEFAULT_SHARD_BYTES"]

logger = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 4 * 1024**3


@contextmanager
def atomic_output_dir(target: "str | Path", overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``target`` only if the block finishes without error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output directory {target} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def float_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors, with weights shared by tying (lm_head = embeddings) stored once."""
    tied_out = None
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        tied_out = next((n for n, m in model.named_modules() if m is head), None) if head is not None else None
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if tied_out is not None and name == f"{tied_out}.weight":
            continue
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def save_tensors(tensors: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """Write safetensors shards named like transformers' (model.safetensors or model-0000i-of-0000n.safetensors)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().contiguous().cpu()
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1
             else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    for shard, fname in zip(shards, names):
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return names


def save_model_files(model: torch.nn.Module, tokenizer: Any, folder: Path, config_extra: dict[str, Any],
                     dtype: torch.dtype | None = None) -> None:
    """config.json (with ``config_extra`` merged in), generation_config.json and the tokenizer."""
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    config.update(config_extra)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(folder)
        except (ValueError, OSError) as e:  # an invalid generation config should not sink the export
            logger.warning("generation_config not saved: %s", e)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def check_output_target(target: "str | Path", overwrite: bool = False) -> None:  # placeholder until trust-export merges
    target = Path(target)
    if target.exists() and not target.is_dir():
        from ..errors import OutputPathError

        raise OutputPathError(f"{target} exists and is not a directory")
