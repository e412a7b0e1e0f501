"""Lazy tensor sources: read one tensor of a checkpoint at a time, so a model can be streamed block by block.

``SafetensorsSource`` parses the safetensors headers itself and reads each tensor with plain ``readinto``
into memory it owns, never through an mmap: mapped file pages count in the process RSS for as long as the
mapping lives, which is what streaming an 8B model is meant to avoid. Headers are validated when the
source opens (cheap, no tensor data touched), so a truncated or inconsistent checkpoint fails before any
work; NaN/inf values are found when a tensor is read. ``ModuleSource`` serves an in-memory module through
the same interface, so callers need not care where the weights come from.

Safetensors data is little endian, as is every machine torch supports here (x86, arm64).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import torch

from ..errors import BadInputError

__all__ = ["TensorInfo", "check_finite", "WeightSource", "SafetensorsSource", "ModuleSource", "SAFETENSORS_DTYPES", "CHUNK_BYTES",
           "INDEX_FILE", "SINGLE_FILE"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CHUNK_BYTES = 64 * 2**20  # copy_to and read move at most this much per call, so no second full-size buffer exists
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit; more means a damaged length field
FINITE_CHUNK = 2**18  # elements checked for NaN/inf at a time: a 256 KB mask the allocator reuses, not heap growth

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorInfo:
    """What a tensor is without reading it; ``file`` is where it lives, for messages."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str  # "<memory>" for an in-memory module

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@runtime_checkable
class WeightSource(Protocol):
    """Named tensors readable one at a time; every failure is a BadInputError naming the file and the tensor."""

    def names(self) -> list[str]:
        """Every tensor name, in file order (stable across calls and runs)."""
        ...

    def info(self, name: str) -> TensorInfo:
        ...

    def read(self, name: str) -> torch.Tensor:
        """The tensor on CPU in its stored dtype."""
        ...

    def copy_to(self, name: str, out: BinaryIO) -> int:
        """Write the tensor's raw bytes (safetensors layout) to ``out`` in chunks; returns the bytes written."""
        ...

    def describe(self) -> str:
        ...


@dataclass(frozen=True)
class _Span:
    """Where a tensor's bytes lie: absolute offsets in its file."""

    info: TensorInfo
    start: int
    end: int


def _missing(source: str, name: str) -> BadInputError:
    return BadInputError(f"{source}: no tensor {name}")


def _parse_header(path: Path) -> list[_Span]:
    """The tensors of one safetensors file in data order, each checked to lie whole inside the file."""
    if not path.is_file():
        raise BadInputError(f"{path}: file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BadInputError(f"{path}: {size} bytes, too short for a safetensors header (truncated?)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise BadInputError(f"{path}: header length {n} is not plausible (not a safetensors file, or damaged)")
        if 8 + n > size:
            raise BadInputError(f"{path}: the header ends at byte {8 + n} but the file has {size} bytes (truncated?)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{path}: the safetensors header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise BadInputError(f"{path}: the safetensors header is not a JSON object")
    spans = [_span(path, name, entry, 8 + n, size) for name, entry in header.items() if name != "__metadata__"]
    return sorted(spans, key=lambda s: (s.start, s.info.name))


def _span(path: Path, name: str, entry: object, base: int, size: int) -> _Span:
    """One header entry checked: known dtype, integer shape, a byte range of exactly its size, inside the file."""
    if not isinstance(entry, dict):
        raise BadInputError(f"{path}: tensor {name} has a malformed header entry {entry!r}")
    dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise BadInputError(f"{path}: tensor {name} has dtype {entry.get('dtype')!r}, not one of "
                            f"{', '.join(SAFETENSORS_DTYPES)}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise BadInputError(f"{path}: tensor {name} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise BadInputError(f"{path}: tensor {name} has invalid data_offsets {offsets!r}")
    info = TensorInfo(name, tuple(shape), dtype, str(path))
    begin, end = offsets
    if end - begin != info.nbytes:
        raise BadInputError(f"{path}: tensor {name} spans {end - begin} bytes but shape {list(shape)} of "
                            f"{entry['dtype']} needs {info.nbytes}")
    if base + end > size:
        raise BadInputError(f"{path}: tensor {name} ends at byte {base + end} but the file has {size} bytes "
                            "(truncated?)")
    return _Span(info, base + begin, base + end)


def _read_index(index: Path) -> dict[str, str]:
    """The index's weight_map: tensor name -> shard file name."""
    try:
        data = json.loads(index.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{index} is not valid JSON: {e}") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise BadInputError(f"{index}: no \"weight_map\" object of tensor name -> file name")
    return weight_map


def _check_finite(t: torch.Tensor, info: TensorInfo) -> None:
    """NaN/inf in a float tensor is a damaged checkpoint; checked in slices so the mask stays small."""
    if not t.is_floating_point():
        return
    flat = t.reshape(-1)
    for i in range(0, flat.numel(), FINITE_CHUNK):
        part = flat[i:i + FINITE_CHUNK]
        if part.dtype.itemsize == 1:  # float8: isfinite is not implemented for every float8 type
            part = part.float()
        if not bool(torch.isfinite(part).all()):
            raise BadInputError(f"{info.file}: {info.name} holds NaN/inf values (damaged checkpoint?)")


class _FiniteWriter:
    """A write target that checks the float bytes it is given instead of keeping them."""

    def __init__(self, info: TensorInfo) -> None:
        self.info = info

    def write(self, chunk: "bytes | memoryview") -> int:
        if len(chunk):
            _check_finite(torch.frombuffer(chunk, dtype=torch.uint8).view(self.info.dtype), self.info)
        return len(chunk)


def check_finite(source: "WeightSource", name: str) -> None:
    """NaN/inf in ``name`` is a BadInputError naming file and tensor; streamed in chunks, never read whole."""
    info = source.info(name)
    if info.dtype.is_floating_point:
        source.copy_to(name, _FiniteWriter(info))  # chunks are whole elements: CHUNK_BYTES is a multiple of 8


class SafetensorsSource:
    """The tensors of a checkpoint directory: ``model.safetensors``, indexed shards, or unindexed shards."""

    def __init__(self, folder: "str | Path"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise BadInputError(f"checkpoint directory not found: {self.folder}")
        self._spans: dict[str, _Span] = {}
        index = self.folder / INDEX_FILE
        if index.is_file():
            self._open_indexed(index)
        else:
            files = [self.folder / SINGLE_FILE] if (self.folder / SINGLE_FILE).is_file() else \
                sorted(self.folder.glob("*.safetensors"))
            if not files:
                raise BadInputError(f"no .safetensors files in {self.folder}")
            for f in files:
                self._add(_parse_header(f))

    def _open_indexed(self, index: Path) -> None:
        weight_map = _read_index(index)
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            path = self.folder / shard
            if not path.is_file():
                first = next(k for k, v in weight_map.items() if v == shard)
                raise BadInputError(f"{index} places tensor {first} in {path}, but that file is missing")
            self._add(_parse_header(path))
        for name, shard in weight_map.items():
            span = self._spans.get(name)
            if span is None or Path(span.info.file) != self.folder / shard:
                where = f"it is in {span.info.file}" if span else "the file has no such tensor"
                raise BadInputError(f"{self.folder / shard}: tensor {name} is missing ({index} places it there, "
                                    f"but {where}; incomplete checkpoint?)")

    def _add(self, spans: list[_Span]) -> None:
        for s in spans:
            if s.info.name in self._spans:
                other = self._spans[s.info.name].info.file
                raise BadInputError(f"{s.info.file}: tensor {s.info.name} is also in {other} "
                                    "(duplicate tensor across shards)")
            self._spans[s.info.name] = s

    def _span_of(self, name: str) -> _Span:
        span = self._spans.get(name)
        if span is None:
            raise _missing(self.describe(), name)
        return span

    def names(self) -> list[str]:
        return list(self._spans)

    def info(self, name: str) -> TensorInfo:
        return self._span_of(name).info

    def read(self, name: str) -> torch.Tensor:
        span = self._span_of(name)
        buf = torch.empty(span.info.nbytes, dtype=torch.uint8)
        self._fill(span, memoryview(buf.numpy()))
        t = buf.view(span.info.dtype).reshape(span.info.shape)
        _check_finite(t, span.info)
        return t

    def read_mapped(self, name: str) -> torch.Tensor:
        """The tensor as a copy-on-write view of its file: only the pages used count in memory.

        For the embedding, of which the calibration pass reads a few rows (a 1 GB table, a few MB touched).
        Its values were checked when the model was opened (``check_finite``); not checked again here.
        """
        import numpy as np

        span = self._span_of(name)
        info = span.info
        if span.end == span.start:
            return torch.empty(info.shape, dtype=info.dtype)
        raw = np.memmap(info.file, dtype=np.uint8, mode="c", offset=span.start, shape=(span.end - span.start,))
        return torch.from_numpy(raw).view(info.dtype).reshape(info.shape)

    def copy_to(self, name: str, out: BinaryIO) -> int:
        span = self._span_of(name)
        total = span.end - span.start
        chunk = bytearray(min(CHUNK_BYTES, total))
        view = memoryview(chunk)
        written = 0
        with open(span.info.file, "rb", buffering=0) as f:
            f.seek(span.start)
            while written < total:
                n = min(len(chunk), total - written)
                self._readinto_exact(f, view[:n], span, span.start + written)
                out.write(view[:n])
                written += n
        return written

    def _fill(self, span: _Span, dest: memoryview) -> None:
        with open(span.info.file, "rb", buffering=0) as f:
            f.seek(span.start)
            for pos in range(0, len(dest), CHUNK_BYTES):
                self._readinto_exact(f, dest[pos:pos + CHUNK_BYTES], span, span.start + pos)

    @staticmethod
    def _readinto_exact(f: BinaryIO, dest: memoryview, span: _Span, at: int) -> None:
        """Fill ``dest`` from ``f``; a short read means the file shrank since it was opened."""
        got = 0
        while got < len(dest):
            n = f.readinto(dest[got:])
            if not n:
                size = Path(span.info.file).stat().st_size
                raise BadInputError(f"{span.info.file}: tensor {span.info.name} ends at byte {span.end} but the file "
                                    f"has {size} bytes (truncated?)")
            got += n

    def describe(self) -> str:
        return str(self.folder)

    def __repr__(self) -> str:
        return f"SafetensorsSource({str(self.folder)!r}, {len(self._spans)} tensors)"


class ModuleSource:
    """An in-memory module's state_dict (tied duplicates under every name) served as a WeightSource, without copies."""

    FILE = "<memory>"

    def __init__(self, module: torch.nn.Module):
        self._label = f"<memory: {type(module).__name__}>"
        self._tensors: dict[str, torch.Tensor] = dict(module.state_dict(keep_vars=False))

    def _get(self, name: str) -> torch.Tensor:
        t = self._tensors.get(name)
        if t is None:
            raise _missing(self.describe(), name)
        return t

    def names(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        t = self._get(name)
        return TensorInfo(name, tuple(t.shape), t.dtype, self.FILE)

    def read(self, name: str) -> torch.Tensor:
        return self._get(name).detach()

    def copy_to(self, name: str, out: BinaryIO) -> int:
        flat = self._get(name).detach().cpu().reshape(-1).contiguous().view(torch.uint8)
        for pos in range(0, flat.numel(), CHUNK_BYTES):
            out.write(memoryview(flat[pos:pos + CHUNK_BYTES].numpy()))
        return flat.numel()

    def describe(self) -> str:
        return self._label
