"""Sharded safetensors written tensor by tensor, so an export never holds the whole model in memory.

The files are byte-identical to ``safetensors.torch.save_file(shard, path, metadata=...)`` per shard
(safetensors 0.8; tests/export/test_shards.py checks each fact below against the library):

- the file is an 8-byte little-endian header length, the header, then the tensors' bytes;
- the data is ordered by dtype, descending in the order of safetensors' ``Dtype`` enum (``_CODES``
  below), then by name (code points, which is the UTF-8 byte order Rust compares);
- the header is compact JSON, UTF-8 not escaped: ``__metadata__`` first, then the tensors in data
  order, padded with spaces to a multiple of 8 bytes.

The library writes several metadata keys in a random order (a Rust HashMap); here they keep the
caller's order, so only metadata of at most one key (signround's ``{"format": "pt"}``) can be
byte-identical. Tensors arrive in another order than the file's: each one's bytes are appended to a
hidden per-shard data file at once, and when the shard is full the final file is written as the header
plus the ranges of that data file in the required order, copied in chunks.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Callable, cast

import torch

from .io import DEFAULT_SHARD_BYTES

__all__ = ["ShardedSafetensorsWriter"]

# torch dtype name -> safetensors code, in safetensors' Dtype enum order (its rank in the data order).
# float4_e2m1fn_x2 is left out: the library doubles its last dimension and cannot read it back.
_CODES = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "float8_e5m2": "F8_E5M2", "float8_e4m3fn": "F8_E4M3",
          "float8_e8m0fnu": "F8_E8M0", "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
          "int16": "I16", "uint16": "U16", "float16": "F16", "bfloat16": "BF16", "int32": "I32", "uint32": "U32",
          "float32": "F32", "complex64": "C64", "float64": "F64", "int64": "I64", "uint64": "U64"}
_RANK = {code: i for i, code in enumerate(_CODES.values())}
_CHUNK = 16 * 2**20  # copy buffer: small next to a tensor, so the peak stays about one tensor
_RESERVED = "__metadata__"


@dataclass(frozen=True)
class _Entry:
    name: str
    code: str
    shape: tuple[int, ...]
    start: int  # offset in the shard's data file
    nbytes: int


@dataclass
class _Shard:
    """A shard being filled: its hidden data file and its tensors in arrival order."""

    data: Path
    out: Path
    file: BinaryIO
    entries: list[_Entry] = field(default_factory=list)
    size: int = 0


def _dtype_code(dtype: torch.dtype) -> str:
    code = _CODES.get(str(dtype).removeprefix("torch."))
    if code is None:
        raise ValueError(f"dtype {dtype} cannot be written to safetensors by this writer")
    return code


def _header(entries: list[_Entry], metadata: dict[str, str]) -> bytes:
    """The padded JSON header, as safetensors writes it for ``entries`` already in data order."""
    head: dict[str, object] = {_RESERVED: metadata}
    offset = 0
    for e in entries:
        head[e.name] = {"dtype": e.code, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def _copy(src: BinaryIO, dst: BinaryIO, start: int, nbytes: int, buf: memoryview) -> None:
    src.seek(start)
    while nbytes:
        n = src.readinto(buf[:min(nbytes, len(buf))])  # type: ignore[attr-defined]
        if not n:
            raise OSError(f"shard data file ended {nbytes} bytes early")
        dst.write(buf[:n])
        nbytes -= n


class ShardedSafetensorsWriter:
    """Write tensors into ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` plus the index.

    Shards are grouped in arrival order like transformers: a new shard starts when the current one is
    not empty and the tensor would take it past ``max_shard_bytes``. ``metadata`` defaults to
    ``{"format": "pt"}``. As a context manager, an exception removes every file the writer created, and
    a normal exit closes it; any failure inside ``add``/``add_raw``/``close`` does the same removal.
    """

    def __init__(self, folder: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 metadata: dict[str, str] | None = None) -> None:
        self._folder = Path(folder)
        self._limit = max_shard_bytes
        self._metadata = {"format": "pt"} if metadata is None else dict(metadata)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self._metadata.items()):
            raise ValueError("safetensors metadata keys and values must be str")
        self._tag = secrets.token_hex(4)
        self._created: list[Path] = []  # everything to remove on failure
        self._finished: list[Path] = []  # full shards, under hidden names until close
        self._shard: _Shard | None = None
        self._where: dict[str, int] = {}  # tensor name -> shard number, in arrival order
        self._total = 0
        self._names: list[str] | None = None
        self._aborted = False

    def __enter__(self) -> ShardedSafetensorsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
        elif self._names is None and not self._aborted:
            self.close()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` to the current shard now (copied to the CPU and made contiguous if needed)."""
        t = tensor.detach()

        def write(f: BinaryIO) -> int:
            flat = t.to("cpu").contiguous().reshape(-1).view(torch.uint8)
            f.write(flat.numpy().data)
            return flat.numel()

        self.add_raw(name, t.dtype, tuple(t.shape), write)

    def add_raw(self, name: str, dtype: torch.dtype, shape: tuple[int, ...],
                write: Callable[[BinaryIO], int]) -> None:
        """Let ``write`` append the tensor's raw little-endian bytes itself (e.g. copied from a source file in chunks).

        ``write`` must only append and return the byte count, which must be ``prod(shape) * itemsize``.
        """
        self._check_open()
        if not isinstance(name, str) or name == _RESERVED:
            raise ValueError(f"invalid tensor name {name!r}")
        if name in self._where:
            raise ValueError(f"tensor {name!r} was already added")
        code = _dtype_code(dtype)
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"invalid shape {shape!r} for {name!r}")
        nbytes = math.prod(shape) * dtype.itemsize
        try:
            shard = self._shard_for(nbytes)
            start = shard.file.tell()
            got = write(shard.file)
            end = shard.file.tell()
            if got != nbytes or end - start != nbytes:
                raise ValueError(f"{name!r}: {dtype} {list(shape)} takes {nbytes} bytes, but write() returned "
                                 f"{got} and wrote {end - start}")
            shard.entries.append(_Entry(name, code, tuple(shape), start, nbytes))
            shard.size += nbytes
            self._where[name] = len(self._finished)
            self._total += nbytes
        except BaseException:
            self.abort()
            raise

    def close(self) -> list[str]:
        """Finish the last shard, give the shards their final names, write the index; return the shard names."""
        if self._names is not None:
            return list(self._names)
        self._check_open()
        try:
            if self._shard is None:
                self._shard = self._open_shard()  # no tensors at all: one file with only the metadata
            self._finish_shard()
            n = len(self._finished)
            names = (["model.safetensors"] if n == 1
                     else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
            for tmp, fname in zip(self._finished, names):
                self._created.append(self._folder / fname)
                os.replace(tmp, self._folder / fname)
                self._created.remove(tmp)
            if n > 1:
                weight_map = {name: names[i] for name, i in self._where.items()}
                index = {"metadata": {"total_size": self._total}, "weight_map": weight_map}
                path = self._folder / "model.safetensors.index.json"
                self._created.append(path)
                path.write_text(json.dumps(index, indent=2))
        except BaseException:
            self.abort()
            raise
        self._names = names
        return list(names)

    def abort(self) -> None:
        """Remove every file this writer created, finished shards and index included; the writer is then unusable."""
        self._aborted = True
        if self._shard is not None:
            self._shard.file.close()
            self._shard = None
        for path in reversed(self._created):
            path.unlink(missing_ok=True)
        self._created.clear()

    def _check_open(self) -> None:
        if self._aborted:
            raise ValueError("the writer was aborted after an error; its files are removed")
        if self._names is not None:
            raise ValueError("the writer is closed")

    def _shard_for(self, nbytes: int) -> _Shard:
        if self._shard is not None and self._shard.entries and self._shard.size + nbytes > self._limit:
            self._finish_shard()
        if self._shard is None:
            self._shard = self._open_shard()
        return self._shard

    def _open_shard(self) -> _Shard:
        stem = f".shard-{self._tag}-{len(self._finished) + 1:05d}"
        data, out = self._folder / f"{stem}.data", self._folder / f"{stem}.safetensors"
        self._created.append(data)
        file = cast(BinaryIO, open(data, "xb+"))
        return _Shard(data, out, file)

    def _finish_shard(self) -> None:
        """Write the shard's file (header, then its data in safetensors' order) and drop its data file."""
        shard = self._shard
        assert shard is not None
        order = sorted(shard.entries, key=lambda e: (-_RANK[e.code], e.name))
        header = _header(order, self._metadata)
        buf = memoryview(bytearray(min(_CHUNK, max((e.nbytes for e in order), default=0))))
        self._created.append(shard.out)
        with shard.file, open(shard.out, "xb") as out:
            shard.file.flush()
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            for e in order:
                _copy(shard.file, out, e.start, e.nbytes, buf)
        shard.data.unlink()
        self._created.remove(shard.data)
        self._finished.append(shard.out)
        self._shard = None
