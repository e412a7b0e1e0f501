"""Write an in-memory Hugging Face causal LM as one GGUF file.

The container and its metadata (architecture hyper-parameters, tokenizer, tensor directory) go
through gguf-py's ``GGUFWriter``; the tensor bytes come from our own packers
(``signround.quant.gguf``) and are handed over as raw uint8 rows with their ggml type.

The writer is a small state machine (STYLE 22): ``CREATED -> CHECKED -> TENSORS_READY -> WRITTEN``.
``check`` validates everything that can fail (architecture, tensor names, types, shapes, supplied
quantized tensors) before any quantization work; ``write`` goes to a temporary file in the target
folder and renames it at the end, so a half-written file never carries the final name.

Quantized tensors may be supplied (``quantized``, keyed by HF parameter name, in HF row order);
the writer applies the architecture's row permutation to them itself. The rest are quantized here
with ``quantize_tensor`` in the given ``SearchMode``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

import gguf
import numpy as np
import torch

from ...quant.gguf import (
    GGMLType,
    GGUFQuantized,
    SearchMode,
    check_shape,
    encode_tensor,
    parse_type,
    quantize_tensor,
    search_mode,
    type_facts,
)
from ...formats.gguf_arch import arch_spec, write_hparams
from ...formats.gguf_tensors import TensorSource, model_tensors
from ...method import Start
from .vocab import vocab_from_tokenizer, write_vocab

__all__ = ["WriterState", "GGUFModelWriter", "write_gguf"]

logger = logging.getLogger(__name__)


class WriterState(str, Enum):
    CREATED = "created"
    CHECKED = "checked"
    TENSORS_READY = "tensors_ready"
    WRITTEN = "written"


def _module_name(hf_name: str) -> str:
    return hf_name.rsplit(".", 1)[0]


class GGUFModelWriter:
    """Collects, checks, encodes and writes the tensors and metadata of one model."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, tensor_types: Mapping[str, GGMLType | str],
                 file_type: int, quantized: Mapping[str, GGUFQuantized] | None = None,
                 imatrix: Mapping[str, torch.Tensor] | None = None, start: Start = Start.SEARCH,
                 tokenizer_pre: str | None = None, name: str | None = None,
                 read: Callable[[str], torch.Tensor] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.read = read  # reads a tensor the model holds on the meta device (a streamed skeleton)
        self.spec = arch_spec(model)
        self.tensor_types = {k: parse_type(v) for k, v in tensor_types.items()}
        self.file_type = int(file_type)
        self.quantized = dict(quantized or {})
        self.imatrix = dict(imatrix or {})
        self.start = Start(start)
        self.tokenizer_pre = tokenizer_pre
        self.name = name
        self.state = WriterState.CREATED
        self.sources: list[TensorSource] = []
        self.encoded: list[tuple[str, np.ndarray, GGMLType]] = []

    def _expect(self, state: WriterState) -> None:
        if self.state is not state:
            raise RuntimeError(f"GGUF writer: expected state {state.value}, got {self.state.value}")

    def _type_of(self, src: TensorSource) -> GGMLType:
        if src.tensor.dim() < 2:
            return GGMLType.F32
        return self.tensor_types[src.gguf_name]

    def check(self) -> "GGUFModelWriter":
        """Validate names, types, shapes and supplied tensors; no quantization happens here."""
        self._expect(WriterState.CREATED)
        self.sources = model_tensors(self.model, self.spec)
        by_hf = {s.hf_name: s for s in self.sources}
        missing = [s.gguf_name for s in self.sources if s.tensor.dim() >= 2 and s.gguf_name not in self.tensor_types]
        if missing:
            raise ValueError(f"no tensor type given for {len(missing)} tensors: {', '.join(missing[:6])}")
        for src in self.sources:
            if src.tensor.dim() > 2:
                raise ValueError(f"{src.hf_name}: {src.tensor.dim()}-D tensors are not supported by the GGUF writer")
            if src.tensor.dim() == 2:
                check_shape(tuple(src.tensor.shape), self._type_of(src), src.gguf_name)
        for hf_name, q in self.quantized.items():
            src = by_hf.get(hf_name)
            if src is None:
                raise ValueError(f"quantized tensor {hf_name!r} is not a tensor of the model")
            if q.qtype is not self._type_of(src) or q.shape != tuple(src.tensor.shape):
                raise ValueError(
                    f"quantized {hf_name}: {q.qtype.name} {q.shape}, but the plan says {self._type_of(src).name} "
                    f"{tuple(src.tensor.shape)} for {src.gguf_name}"
                )
        self.vocab = vocab_from_tokenizer(self.tokenizer, int(self.model.config.vocab_size), self.model.config,
                                          self.tokenizer_pre)
        self.state = WriterState.CHECKED
        return self

    def _tensor(self, src: TensorSource) -> torch.Tensor:
        if not src.tensor.is_meta:
            return src.tensor
        if self.read is None:
            raise ValueError(f"{src.hf_name} is not in memory and no reader was given")
        return self.read(src.hf_name)

    def _encode(self, src: TensorSource, qtype: GGMLType) -> np.ndarray:
        if src.tensor.dim() >= 2 and src.hf_name in self.quantized:
            t = src.tensor  # never read: the codes are given
        else:
            t = self._tensor(src).float()
        if src.add:
            t = t + src.add
        if t.dim() < 2:
            t = t if src.row_permutation is None else t[src.row_permutation]
            return t.cpu().numpy().astype(np.float32)
        q = self.quantized.get(src.hf_name)
        if q is None and not type_facts(qtype).is_float:
            im = self.imatrix.get(_module_name(src.hf_name))
            mode = search_mode(self.start, im is not None)
            q = quantize_tensor(t, qtype, imatrix=im if mode is SearchMode.IMATRIX else None, mode=mode,
                                name=src.gguf_name)
        if q is not None:
            if src.row_permutation is not None:
                q = q.select_rows(src.row_permutation)
            return q.to_bytes().cpu().numpy()
        if src.row_permutation is not None:
            t = t[src.row_permutation]
        return encode_tensor(t, qtype).cpu().numpy()

    def encode(self) -> "GGUFModelWriter":
        self._expect(WriterState.CHECKED)
        for src in self.sources:
            qtype = self._type_of(src)
            self.encoded.append((src.gguf_name, self._encode(src, qtype), qtype))
            logger.debug("encoded %s as %s", src.gguf_name, qtype.name)
        self.state = WriterState.TENSORS_READY
        return self

    def write(self, path: str | os.PathLike) -> Path:
        self._expect(WriterState.TENSORS_READY)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            w = gguf.GGUFWriter(tmp, self.spec.arch_name)
            w.add_name(self.name or str(getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__))
            write_hparams(self.spec, self.model.config, w)
            w.add_file_type(self.file_type)
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            write_vocab(self.vocab, w)
            for name, data, qtype in self.encoded:
                if data.dtype == np.uint8:
                    w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType(int(qtype)))
                else:
                    w.add_tensor(name, data)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a model file is not
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.state = WriterState.WRITTEN
        logger.info("wrote %s (%d tensors, %.1f MB)", path, len(self.encoded), path.stat().st_size / 1e6)
        return path


def write_gguf(
    model: torch.nn.Module,
    tokenizer: Any,
    path: str | os.PathLike,
    tensor_types: Mapping[str, GGMLType | str],
    quantized: Mapping[str, GGUFQuantized] | None = None,
    *,
    file_type: int,
    imatrix: Mapping[str, torch.Tensor] | None = None,
    start: Start = Start.SEARCH,
    tokenizer_pre: str | None = None,
    name: str | None = None,
    read: Callable[[str], torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` to ``path`` with ``tensor_types[gguf_name]`` for every 2-D tensor (1-D ones stay F32).

    ``quantized`` maps HF parameter names (``model.layers.0.mlp.down_proj.weight``) to already
    quantized tensors in HF row order; ``imatrix`` maps HF Linear module names to (in_features,)
    importances for the tensors quantized here; ``start`` chooses their search (``search_mode``: IMATRIX
    where an imatrix is given, else REF; RTN for ``Start.MINMAX``). ``file_type`` is the ``gguf.LlamaFileType`` value.
    ``read``: reads the float tensors of a model streamed from disk (its parameters on the meta device).
    """
    writer = GGUFModelWriter(model, tokenizer, tensor_types, file_type, quantized, imatrix, start, tokenizer_pre, name,
                             read)
    return writer.check().encode().write(path)
