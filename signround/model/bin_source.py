"""``pytorch_model.bin`` checkpoints (single or sharded by ``pytorch_model.bin.index.json``) read one tensor at a time.

Zip-format files (torch >= 1.6) are opened with ``torch.load(mmap=True, weights_only=True)``: no tensor
data is touched until a tensor is read. Each read maps the file afresh, copies the one tensor into
memory it owns (or out, in chunks) and drops the mapping, because mapped pages stay in the process RSS
while the mapping lives (what streaming exists to avoid); only the embedding is served as a mapped view,
of which the calibration pass touches a few rows. The legacy non-zip format cannot be mapped: ``is_streamable``
says so and the caller loads the model whole.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import BadInputError
from .weights import CHUNK_BYTES, TensorInfo, _check_finite, _read_index

__all__ = ["BIN_INDEX_FILE", "BIN_SINGLE_FILE", "BinSource", "bin_files", "is_streamable"]

BIN_INDEX_FILE = "pytorch_model.bin.index.json"
BIN_SINGLE_FILE = "pytorch_model.bin"
_ZIP_MAGIC = b"PK\x03\x04"


def bin_files(folder: Path) -> list[Path]:
    """The ``.bin`` files of a checkpoint folder: the shards its index names, else ``pytorch_model.bin`` ([]: none)."""
    index = folder / BIN_INDEX_FILE
    if index.is_file():
        return sorted({folder / f for f in _read_index(index).values()})
    return [folder / BIN_SINGLE_FILE] if (folder / BIN_SINGLE_FILE).is_file() else []


def is_streamable(folder: Path) -> str | None:
    """None when every ``.bin`` file is zip format (or missing: the source names it); else why not."""
    for f in bin_files(folder):
        if f.is_file():
            with open(f, "rb") as h:
                head = h.read(4)
            if head and head != _ZIP_MAGIC:
                return f"{f} is in torch's legacy (non-zip) format, which cannot be memory-mapped"
    return None


def _load(path: Path) -> dict[str, torch.Tensor]:
    """The file's state dict, tensors mapped (not read); a damaged file is a BadInputError naming it."""
    if not path.is_file():
        raise BadInputError(f"{path}: file not found")
    try:
        data = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise BadInputError(f"{path}: torch.load could not read it (truncated or damaged?): "
                            f"{str(e).strip()[:300]}") from e
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(t, torch.Tensor) for t in data.values()):
        raise BadInputError(f"{path}: not a state dict of tensors")
    return data


def _check_stored(path: Path, name: str, t: torch.Tensor) -> None:
    """The tensor's bytes lie inside its storage (a truncated storage record fails here, before any work)."""
    need = (t.storage_offset() + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1) * t.element_size() \
        if t.numel() else 0
    have = t.untyped_storage().nbytes()
    if need > have:
        raise BadInputError(f"{path}: tensor {name} needs {need} bytes of its storage, which holds {have} "
                            "(truncated?)")


class BinSource:
    """The tensors of a ``.bin`` checkpoint folder, as a ``WeightSource``."""

    def __init__(self, folder: "str | Path"):
        self.folder = Path(folder)
        self._infos: dict[str, TensorInfo] = {}
        files = bin_files(self.folder)
        if not files:
            raise BadInputError(f"no {BIN_SINGLE_FILE} nor {BIN_INDEX_FILE} in {self.folder}")
        index = self.folder / BIN_INDEX_FILE
        weight_map = _read_index(index) if index.is_file() else None
        if weight_map is not None:
            for f in files:
                if not f.is_file():
                    first = next(k for k, v in weight_map.items() if self.folder / v == f)
                    raise BadInputError(f"{index} places tensor {first} in {f}, but that file is missing")
        for f in files:
            state = _load(f)
            for name, t in state.items():
                _check_stored(f, name, t)
                if name in self._infos:
                    raise BadInputError(f"{f}: tensor {name} is also in {self._infos[name].file} "
                                        "(duplicate tensor across shards)")
                self._infos[name] = TensorInfo(name, tuple(t.shape), t.dtype, str(f))
            del state
        for name, shard in (weight_map or {}).items():
            info = self._infos.get(name)
            if info is None or Path(info.file) != self.folder / shard:
                where = f"it is in {info.file}" if info else "the file has no such tensor"
                raise BadInputError(f"{self.folder / shard}: tensor {name} is missing ({index} places it there, "
                                    f"but {where}; incomplete checkpoint?)")

    def _info(self, name: str) -> TensorInfo:
        info = self._infos.get(name)
        if info is None:
            raise BadInputError(f"{self.describe()}: no tensor {name}")
        return info

    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        return self._info(name)

    def _mapped(self, name: str) -> torch.Tensor:
        """The tensor as a view of its file, mapped afresh; the mapping lives as long as the view."""
        info = self._info(name)
        mapped = _load(Path(info.file)).get(name)
        if mapped is None or tuple(mapped.shape) != info.shape or mapped.dtype != info.dtype:
            raise BadInputError(f"{info.file}: tensor {name} changed since the checkpoint was opened")
        return mapped

    def read(self, name: str) -> torch.Tensor:
        info = self._info(name)
        out = torch.empty(info.shape, dtype=info.dtype)
        out.copy_(self._mapped(name))  # the file's pages are touched here and unmapped right after
        _check_finite(out, info)
        return out

    def read_mapped(self, name: str) -> torch.Tensor:
        """The tensor as a copy-on-write view of its file: only the pages used count in memory.

        For the embedding, of which the calibration pass reads a few rows; its values were checked when the
        model was opened (``check_finite``)."""
        return self._mapped(name)

    def copy_to(self, name: str, out: BinaryIO) -> int:
        mapped = self._mapped(name)
        flat = (mapped if mapped.is_contiguous() else mapped.contiguous()).reshape(-1).view(torch.uint8)
        for pos in range(0, flat.numel(), CHUNK_BYTES):
            out.write(memoryview(flat[pos:pos + CHUNK_BYTES].numpy()))
        return flat.numel()

    def describe(self) -> str:
        return str(self.folder)

    def __repr__(self) -> str:
        return f"BinSource({str(self.folder)!r}, {len(self._infos)} tensors)"
