"""Streamed loading: checkpoint tensors read from their shard when used, packed layers decoded one at a time.

``ShardTensors`` maps tensor names to the shard holding them (headers only) and reads a tensor on each
access, through a ``safe_open`` handle opened for that read and closed after it: the file is memory-mapped
only during the copy, so no shard stays resident. ``row_chunks`` and ``read_as`` read a large tensor a
few MiB of rows at a time (a float32 embedding loaded as bfloat16 never exists in float32 whole), and
``header`` gives shape and dtype without reading. ``LazyLayers`` decodes a packed layer when asked for it
and keeps nothing, so the loader holds one layer's file tensors and codes at a time beside the
modules already built: peak RSS while loading is about the loaded model's size, not the float one's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Callable

import torch

from ..quant.types import QuantizedWeight
from .layouts import CheckpointError

__all__ = ["ShardTensors", "LazyLayers", "CHUNK_BYTES"]

CHUNK_BYTES = 8 << 20  # rows read per piece by row_chunks / read_as
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
           "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}  # safetensors dtype names


def _file_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header ({name: {dtype, shape, data_offsets}}) and the offset its data starts at."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size)), 8 + size


def _pieces(path: Path, entry: dict, base: int) -> Iterator[torch.Tensor]:
    """One tensor of a safetensors file as pieces of whole rows of about ``CHUNK_BYTES``, read with plain file
    reads into one reused buffer (no memory map: the file's pages never count in this process's RSS). Each piece
    is valid until the next one is read."""
    dtype, shape = _DTYPES[entry["dtype"]], tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    row_elems = int(torch.Size(shape[1:]).numel()) if len(shape) > 1 else 1
    rows = shape[0] if shape else 1
    step = max(1, CHUNK_BYTES // (row_elems * dtype.itemsize))
    buf = torch.empty(min(step, rows) * row_elems, dtype=dtype)
    raw = memoryview(buf.view(torch.uint8).numpy())
    with open(path, "rb", buffering=0) as f:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            want = n * row_elems * dtype.itemsize
            f.seek(base + begin + start * row_elems * dtype.itemsize)
            got = 0
            while got < want:
                k = f.readinto(raw[got:want])
                if not k:
                    raise CheckpointError(f"cannot read {path}: it ends inside tensor data (truncated file?)")
                got += k
            piece = buf[: n * row_elems]
            yield piece.reshape(()) if not shape else piece.view(n, *shape[1:])  # (n, ...) rows


class ShardTensors(MutableMapping):
    """{tensor name: tensor} over safetensors shards, each value read from its file when accessed (not cached).

    Deleting a key forgets the tensor without reading it; assigning is refused (the mapping mirrors files).
    """

    def __init__(self, where: Mapping[str, str]) -> None:
        self.where = dict(where)  # every tensor's file, for messages; never shrinks
        self._names = dict.fromkeys(where)
        self._headers: dict[Path, tuple[dict, int]] = {}  # file -> (header, data offset), read on first use

    def __getitem__(self, name: str) -> torch.Tensor:
        from .checkpoint import _opened

        if name not in self._names:
            raise KeyError(name)
        with _opened(Path(self.where[name])) as handle:
            return handle.get_tensor(name)

    def _entry(self, name: str) -> tuple[Path, dict, int]:
        if name not in self._names:
            raise KeyError(name)
        path = Path(self.where[name])
        if path not in self._headers:
            self._headers[path] = _file_header(path)
        header, base = self._headers[path]
        return path, header[name], base

    def header(self, name: str) -> tuple[tuple[int, ...], "torch.dtype | None"]:
        """(shape, dtype) of a tensor from its file's header, nothing read (dtype None: one torch lacks)."""
        _, entry, _ = self._entry(name)
        return tuple(entry["shape"]), _DTYPES.get(entry["dtype"])

    def row_chunks(self, name: str) -> Iterator[torch.Tensor]:
        """The tensor as consecutive pieces of whole rows (dim 0) of about ``CHUNK_BYTES`` each, read one at a time
        into one buffer (each piece valid until the next)."""
        yield from _pieces(*self._entry(name))

    def read_as(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The tensor cast to ``dtype`` piece by piece: the file's dtype never holds more than one piece."""
        path, entry, base = self._entry(name)
        out = torch.empty(entry["shape"], dtype=dtype)
        flat = out.view(-1, *out.shape[1:]) if out.dim() else out.view(1)  # (rows, ...)
        start = 0
        for piece in _pieces(path, entry, base):
            piece = piece.reshape(-1, *flat.shape[1:])
            flat[start: start + piece.shape[0]] = piece
            start += piece.shape[0]
        return out

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        raise TypeError("ShardTensors mirrors the checkpoint files; it cannot take new tensors")

    def __delitem__(self, name: str) -> None:
        del self._names[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def discard(self, name: str) -> None:
        """Forget ``name`` (if present) without reading it."""
        self._names.pop(name, None)


class LazyLayers(Mapping):
    """{layer name: decoded codes}, each decoded by its function when accessed (not cached)."""

    def __init__(self, decoders: dict[str, Callable[[], QuantizedWeight]], eager: Mapping[str, object]) -> None:
        self._decoders, self._eager = decoders, dict(eager)

    def __getitem__(self, name: str):
        if name in self._eager:
            return self._eager[name]
        return self._decoders[name]()

    def __iter__(self) -> Iterator[str]:
        return iter([*self._decoders, *self._eager])

    def __len__(self) -> int:
        return len(self._decoders) + len(self._eager)
