"""Read a ``.gguf`` model one tensor at a time, as the tensors ``from_pretrained(gguf_file=)`` would give.

Loading a GGUF with transformers dequantizes every tensor at once (a 7B model: ~28 GB of float32);
re-quantizing block by block only needs one block's tensors. The file is memory-mapped by gguf-py's
``GGUFReader`` and each ``read`` dequantizes just the tensor asked for.

Every fact about the GGUF layout comes from transformers' own legacy loader
(``transformers.modeling_gguf_pytorch_utils``): the name map (``get_gguf_hf_weights_map``), the
per-architecture fix-ups (``TENSOR_PROCESSORS``: llama.cpp's q/k row permutation undone, Gemma's
``norm + 1`` undone, ...) and the config those fix-ups read (``load_gguf_checkpoint``). That is the path
``from_pretrained`` takes for llama, mistral, qwen2, qwen3 and gemma3 files, so ``read`` is bitwise what it
loads in float32. Architectures whose experts are split or merged across tensors (the MoE ones) cannot be
read one tensor at a time; their expert parameters come out missing, which ``__init__`` reports. The few
architectures transformers loads through its newer path (``integrations.gguf``: qwen35, lfm2) are refused.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .weights import TensorInfo

from ..errors import BadInputError

__all__ = ["GGUFSource", "TensorInfo", "gguf_config"]

# What a damaged or unsupported file makes gguf-py / transformers raise while parsing it.
_PARSE_ERRORS = (ValueError, OSError, KeyError, IndexError, TypeError, struct.error, NotImplementedError)


def gguf_config(path: Path):
    """The transformers config of a ``.gguf`` file, exactly as ``AutoConfig.from_pretrained(gguf_file=)`` builds it."""
    from transformers import AutoConfig

    path = Path(path)
    _check_is_file(path)
    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except _PARSE_ERRORS as e:
        raise BadInputError(f"{path}: cannot build a transformers config from this GGUF file: {e}") from e


class GGUFSource:
    """The HF-named float32 tensors of one ``.gguf`` file, each dequantized only when read.

    ``model``: a skeleton of the model (parameters may be on the meta device) to name and shape the
    tensors; without one, a meta skeleton is built from ``gguf_config(path)``. Only names and shapes are kept.
    Opening parses the file's metadata twice with a skeleton (gguf-py's reader for the tensor table,
    transformers' for the config its fix-ups read), three times without: seconds, not per tensor.
    """

    def __init__(self, path: Path, model: torch.nn.Module | None = None):
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map, load_gguf_checkpoint)
        from transformers.integrations.gguf.utils import is_gguf_arch_supported

        self.path = Path(path)
        self._reader = _open_reader(self.path)
        self.architecture = _architecture(self._reader, self.path)
        if is_gguf_arch_supported(self.architecture):  # from_pretrained takes its newer path, not the legacy one
            raise BadInputError(f"{self.path}: {self.architecture} files load through transformers' newer GGUF path, "
                                "which GGUFSource does not follow; load this model whole")
        try:  # the config dict the legacy loader hands its tensor processor (not the PretrainedConfig)
            processor_config = load_gguf_checkpoint(str(self.path), return_tensors=False)["config"]
        except _PARSE_ERRORS as e:
            raise BadInputError(f"{self.path}: transformers cannot read this GGUF file: {e}") from e
        if model is None:
            model = _meta_skeleton(self.path)
        # keyed by the file's own architecture name, as load_gguf_checkpoint does
        self._processor = TENSOR_PROCESSORS.get(self.architecture, TensorProcessor)(config=processor_config)
        try:
            self._key_map = get_gguf_hf_weights_map(model, self._processor)
        except NotImplementedError as e:
            raise BadInputError(f"{self.path}: gguf-py has no tensor names for this architecture: {e}") from e
        params = dict(model.named_parameters(remove_duplicate=False))
        self._shapes = {name: tuple(p.shape) for name, p in params.items()}
        self._tensors = {}  # HF name -> gguf-py ReaderTensor, in file order
        for t in self._reader.tensors:
            hf = self._key_map.get(t.name)
            if hf is not None and hf in params:
                self._tensors[hf] = t
        self._aliases = _tied_aliases(params, self._tensors)
        self._check_complete(model)
        self._check_sizes()

    def names(self) -> list[str]:
        """HF parameter names the file holds, in file order. A tied copy (``lm_head.weight`` of a model whose
        file has no ``output.weight``) is not listed, as in ``named_parameters()``; ``read`` still accepts it."""
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        return TensorInfo(name, self._shapes[self._source_of(name)], torch.float32, str(self.path))

    def read(self, name: str) -> torch.Tensor:
        """``name`` as a float32 CPU tensor: dequantized, fixed up by transformers' processor, checked finite."""
        from gguf import quants

        src = self._source_of(name)
        t = self._tensors[src]
        where = f"{self.path}: tensor {t.name} ({src})"
        try:
            weights = quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise BadInputError(f"{where}: gguf-py cannot dequantize ggml type {t.tensor_type.name}: {e}") from e
        scratch = {"tensors": {}}  # where a processor that renames a tensor puts it (gpt2's output.weight)
        result = self._processor.process(weights=weights, name=t.name, tensor_key_mapping=self._key_map,
                                         parsed_parameters=scratch)
        if result.name is None:
            tensor = scratch["tensors"][src]
        else:
            tensor = torch.from_numpy(np.copy(result.weights))
        tensor = tensor.to(torch.float32)
        if tuple(tensor.shape) != self._shapes[src]:
            raise BadInputError(f"{where} has shape {tuple(tensor.shape)}; the model expects {self._shapes[src]}")
        if not bool(torch.isfinite(tensor).all()):
            raise BadInputError(f"{where} holds NaN/inf values (damaged file?)")
        return tensor

    def copy_to(self, name: str, out: BinaryIO) -> int:
        """Write ``read(name)``'s raw float32 bytes (native byte order) to ``out``; the number written."""
        data = self.read(name).contiguous().numpy()
        out.write(memoryview(data).cast("B"))
        return data.nbytes

    def describe(self) -> str:
        types = Counter(t.tensor_type.name for t in self._tensors.values())
        mix = ", ".join(f"{n} {k}" for k, n in types.most_common())
        return f"GGUF file {self.path} ({self.architecture}, {len(self._tensors)} tensors: {mix})"

    def _source_of(self, name: str) -> str:
        """The listed name holding ``name``'s tensor (itself, or the parameter a tied one shares)."""
        if name in self._tensors:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise BadInputError(f"{self.path}: no tensor for parameter {name!r} in this GGUF file")

    def _check_complete(self, model: torch.nn.Module) -> None:
        """Every parameter of the model comes from the file; else from_pretrained would init it randomly."""
        missing = [n for n, _ in model.named_parameters() if n not in self._tensors and n not in self._aliases]
        if missing:
            raise BadInputError(
                f"{self.path}: no tensor for {', '.join(missing[:6])}"
                + (f" ... ({len(missing)} in all)" if len(missing) > 6 else "")
                + f" (truncated file, a model of another shape, or a {self.architecture} layout that is not one "
                "tensor per parameter, as in mixture-of-experts files)")


    def _check_sizes(self) -> None:
        """Each tensor holds as many values as its parameter, checked before any is read: from_pretrained refuses
        a mismatch (a config transformers rebuilt wrong from the metadata, or a skeleton of another model)."""
        for hf, t in self._tensors.items():
            if int(t.n_elements) != math.prod(self._shapes[hf]):
                raise BadInputError(
                    f"{self.path}: tensor {t.name} has shape {tuple(reversed(t.shape.tolist()))}; the model's {hf} "
                    f"is {self._shapes[hf]}")


def _check_is_file(path: Path) -> None:
    if not path.is_file():
        raise BadInputError(f"{path}: no such GGUF file")


def _open_reader(path: Path):
    """gguf-py's memory-mapped reader, with every tensor's bytes inside the file."""
    from gguf import GGUFReader

    _check_is_file(path)
    try:
        reader = GGUFReader(path, "r")
    except _PARSE_ERRORS as e:
        raise BadInputError(f"{path}: not a readable GGUF file (truncated or corrupted?): {e}") from e
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise BadInputError(f"{path}: tensor {t.name} ends past the end of the file (truncated?)")
    return reader


def _architecture(reader, path: Path) -> str:
    field = reader.fields.get("general.architecture")
    if field is None:
        raise BadInputError(f"{path}: the GGUF metadata has no general.architecture")
    return str(field.contents())


def _meta_skeleton(path: Path) -> torch.nn.Module:
    """The model ``from_pretrained(gguf_file=)`` would build, with its parameters on the meta device."""
    from transformers import AutoModelForCausalLM

    config = gguf_config(path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _tied_aliases(params: dict[str, torch.nn.Parameter], listed: dict) -> dict[str, str]:
    """Parameter name -> the listed name of the tensor it shares (a tied lm_head -> the embedding)."""
    by_id = {id(p): name for name, p in params.items() if name in listed}
    return {name: by_id[id(p)] for name, p in params.items() if name not in listed and id(p) in by_id}
