"""Cached calibration activations (rows x seqlen x hidden) kept in RAM within a budget, else spilled to disk.

A block-by-block run holds two or three (N, T, H) float32 tensors at once; for a large model and many
samples they exceed RAM. ``row_store`` places each in RAM while the ``MemoryBudget`` allows and spills
the rest to a file. The spilled file is read with ``preadv`` into fresh tensors and written with
``pwritev``: no mmap, since mapped file pages count in the process RSS and get it OOM-killed just the
same. An in-RAM store is the plain tensor, indexed directly, so results stay bit-identical.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import BadInputError
from ..sizes import available_memory, format_size

__all__ = ["MemoryBudget", "RowStore", "row_store", "from_tensor"]

logger = logging.getLogger(__name__)

_COPY_BYTES = 64 * 2**20  # rows moved per step when a store is copied into or out of a file


@dataclass
class MemoryBudget:
    """How many bytes of cached activations may live in RAM; the stores placed in RAM add to ``used``."""

    limit: int
    spill_dir: Path
    used: int = 0

    @classmethod
    def default(cls, spill_dir: str | Path) -> MemoryBudget:
        """Half the RAM free now: the model, the block being tuned and the optimizer need the rest."""
        return cls(available_memory() // 2, Path(spill_dir))

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.limit

    def describe(self) -> str:
        return f"budget {format_size(self.limit)}, {format_size(self.used)} used"


class RowStore:
    """(N, T, H) rows read and written in batches: ``store[rows]``, ``store[sl] = value``."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    spilled: bool
    nbytes: int
    what: str
    _budget: MemoryBudget
    _place: torch.device  # where an in-RAM sibling (empty_like, clone) is allocated

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __setitem__(self, rows, value: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where ``store[rows]`` tensors are."""
        raise NotImplementedError  # pragma: no cover - abstract

    def tensor(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def empty_like(self, what: str) -> RowStore:
        """A store of the same shape and dtype with undefined contents, placed by the same budget."""
        return row_store(self.shape, self.dtype, self._budget, what, self._place)

    def clone(self, what: str) -> RowStore:
        """A copy placed by the same budget (which may put it elsewhere than this one)."""
        copy = self.empty_like(what)
        if isinstance(copy, _RamRows) and isinstance(self, _RamRows):
            copy.tensor().copy_(self.tensor())
        else:
            step = _rows_per_copy(self)
            for start in range(0, len(self), step):
                copy[start:start + step] = self[start:start + step]
        return copy

    def __repr__(self) -> str:
        where = f"disk {getattr(self, 'path', '')}" if self.spilled else f"RAM {self.device}"
        return f"RowStore({self.what!r}, shape={self.shape}, dtype={self.dtype}, {where})"


class _Closed:
    """Stands in for a closed in-RAM store's tensor, so late use fails with a message, at no cost before."""

    def __init__(self, what: str):
        self.what = what

    def __getitem__(self, rows):
        raise RuntimeError(f"calibration activations {self.what!r} were used after close()")

    __setitem__ = __getitem__


def _give_back(budget: MemoryBudget, nbytes: int) -> None:
    budget.used -= nbytes


class _RamRows(RowStore):
    """The plain tensor: indexing is tensor indexing."""

    spilled = False

    def __init__(self, t: torch.Tensor, budget: MemoryBudget, what: str):
        self._t = t
        self.shape, self.dtype, self.what = tuple(t.shape), t.dtype, what
        self.nbytes = t.numel() * t.element_size()
        self._budget, self._place = budget, t.device
        budget.used += self.nbytes
        self._release = weakref.finalize(self, _give_back, budget, self.nbytes)

    def __getitem__(self, rows) -> torch.Tensor:
        return self._t[rows]

    def __setitem__(self, rows, value: torch.Tensor) -> None:
        self._t[rows] = value

    @property
    def device(self) -> torch.device:
        return self._place

    def tensor(self) -> torch.Tensor:
        """The tensor itself (not a copy)."""
        if isinstance(self._t, _Closed):
            raise RuntimeError(f"calibration activations {self.what!r} were used after close()")
        return self._t

    def close(self) -> None:
        self._t = _Closed(self.what)
        self._release()


def _remove(fd: int, path: Path) -> None:
    os.close(fd)
    path.unlink(missing_ok=True)


class _DiskRows(RowStore):
    """A file of rows, row ``i`` at byte ``i * rowbytes``; read and written with positional I/O."""

    spilled = True

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, budget: MemoryBudget, what: str,
                 place: torch.device, path: Path, fd: int):
        self.shape, self.dtype, self.what = shape, dtype, what
        self.rowbytes = math.prod(shape[1:]) * dtype.itemsize
        self.nbytes = shape[0] * self.rowbytes
        self._budget, self._place = budget, place
        self.path, self._fd = path, fd
        self._release = weakref.finalize(self, _remove, fd, path)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __getitem__(self, rows) -> torch.Tensor:
        runs, out_shape = self._runs(rows)
        out = torch.empty(out_shape, dtype=self.dtype)
        buf, rb = _bytes(out), self.rowbytes
        for pos, first, n in runs:
            _pread_all(self._fd, buf[pos * rb:(pos + n) * rb], first * rb)
        return out

    def __setitem__(self, rows, value: torch.Tensor) -> None:
        runs, shape = self._runs(rows)
        value = torch.broadcast_to(value.detach().to(device="cpu", dtype=self.dtype), shape).contiguous()
        buf, rb = _bytes(value), self.rowbytes
        for pos, first, n in runs:
            _pwrite_all(self._fd, buf[pos * rb:(pos + n) * rb], first * rb, self.path)

    def tensor(self) -> torch.Tensor:
        """Every row read back into a fresh tensor."""
        return self[:]

    def close(self) -> None:
        self._release()

    def _runs(self, rows) -> tuple[list[list[int]], tuple[int, ...]]:
        """[[position in the batch, first row, row count], ...] with consecutive rows merged; the batch shape."""
        if not self._release.alive:
            raise RuntimeError(f"calibration activations {self.what!r} were used after close()")
        n_rows, rest = self.shape[0], self.shape[1:]
        if isinstance(rows, slice):
            start, stop, step = rows.indices(n_rows)
            if step == 1:
                count = max(0, stop - start)
                return ([[0, start, count]] if count else []), (count, *rest)
            rows = torch.arange(start, stop, step)
        if isinstance(rows, int):
            if not -n_rows <= rows < n_rows:
                raise IndexError(f"row {rows} is out of range for {n_rows} rows of {self.what!r}")
            return [[0, rows % n_rows, 1]], rest
        index = torch.as_tensor(rows)
        if index.dtype == torch.bool:
            if index.shape != (n_rows,):
                raise IndexError(f"boolean row mask of shape {tuple(index.shape)} for {n_rows} rows of {self.what!r}")
            index = index.nonzero().flatten()
        elif index.dtype.is_floating_point or index.dtype.is_complex:
            raise IndexError(f"rows of {self.what!r} must be indexed by integers, got {index.dtype}")
        flat = index.flatten().tolist()
        if flat and not (-n_rows <= min(flat) and max(flat) < n_rows):
            raise IndexError(f"row index out of range for {n_rows} rows of {self.what!r}")
        runs: list[list[int]] = []
        for pos, row in enumerate(flat):
            row %= n_rows
            if runs and runs[-1][1] + runs[-1][2] == row:
                runs[-1][2] += 1
            else:
                runs.append([pos, row, 1])
        return runs, (*index.shape, *rest)


def _bytes(t: torch.Tensor) -> memoryview:
    """The contiguous tensor's bytes (uint8 view, so bfloat16 works)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _pread_all(fd: int, buf: memoryview, offset: int) -> None:
    while buf:  # a read returns at most ~2 GiB, so large runs take several
        got = os.preadv(fd, [buf], offset)
        if got <= 0:
            raise OSError(f"spill file ended at byte {offset}")
        buf, offset = buf[got:], offset + got


def _pwrite_all(fd: int, buf: memoryview, offset: int, path: Path) -> None:
    try:
        while buf:
            put = os.pwritev(fd, [buf], offset)
            buf, offset = buf[put:], offset + put
    except OSError as exc:
        raise BadInputError(f"cannot write the calibration activations spill file {path}: {exc.strerror}; "
                            "free space there or give another spill directory") from exc


def _rows_per_copy(store: RowStore) -> int:
    rowbytes = store.nbytes // max(1, len(store))
    return max(1, _COPY_BYTES // max(1, rowbytes))


def _on_tmpfs(path: Path) -> bool:
    """A file in tmpfs lives in RAM, so spilling there saves nothing."""
    best, fstype, inside = "", "", str(path).rstrip("/") + "/"
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and inside.startswith(fields[1].rstrip("/") + "/") and len(fields[1]) > len(best):
                best, fstype = fields[1], fields[2]
    except OSError:
        return False
    return fstype in ("tmpfs", "ramfs")


def _spill_file(budget: MemoryBudget, what: str, nbytes: int) -> tuple[Path, int]:
    """Create ``.signround-<what>-<pid>-<random>.rows`` (O_EXCL) sized ``nbytes`` in the spill directory."""
    folder = Path(budget.spill_dir).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise BadInputError(f"spill directory {folder} for calibration activations is unusable: {exc.strerror}; "
                            "give a writable directory") from exc
    if free < nbytes:
        raise BadInputError(f"calibration activations {what!r} ({format_size(nbytes)}) exceed the RAM budget "
                            f"and spill directory {folder} has only {format_size(free)} free; free space there, "
                            "give another spill directory or a larger memory budget")
    if _on_tmpfs(folder):
        logger.warning("spill directory %s is in RAM (tmpfs): spilled activations still take memory", folder)
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", what)[:40]
    while True:
        path = folder / f".signround-{stem}-{os.getpid()}-{secrets.token_hex(4)}.rows"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise BadInputError(f"cannot create a spill file in {folder}: {exc.strerror}; "
                                "give a writable spill directory") from exc
        break
    try:
        os.ftruncate(fd, nbytes)  # sparse: unwritten rows read as zeros and take no disk
    except BaseException:
        _remove(fd, path)
        raise
    return path, fd


def _place(shape, dtype: torch.dtype, budget: MemoryBudget, what: str, device, ram) -> RowStore:
    """``ram()`` (a tensor) if it fits the budget, else a spill file; logs where it went."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or min(shape) < 0:
        raise ValueError(f"calibration activations {what!r} need a shape (rows, ...), got {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    head = f"calibration activations {what!r} ({format_size(nbytes)})"
    before = budget.describe()
    if budget.fits(nbytes):
        store: RowStore = _RamRows(ram(), budget, what)
        logger.info("%s: RAM, %s (%s)", head, store.device, before)
        return store
    path, fd = _spill_file(budget, what, nbytes)
    logger.info("%s: disk, %s (%s)", head, path, before)
    return _DiskRows(shape, dtype, budget, what, torch.device(device), path, fd)


def row_store(shape, dtype: torch.dtype, budget: MemoryBudget, what: str, device="cpu") -> RowStore:
    """An empty (N, T, H) store: a tensor on ``device`` when it fits ``budget``, else a file in its spill dir."""
    return _place(shape, dtype, budget, what, device, lambda: torch.empty(shape, dtype=dtype, device=device))


def from_tensor(t: torch.Tensor, budget: MemoryBudget, what: str, device=None) -> RowStore:
    """``t`` as a store: ``t`` itself (moved to ``device`` if given) when it fits ``budget``, else written to a file."""
    place = t.device if device is None else torch.device(device)
    store = _place(t.shape, t.dtype, budget, what, place, lambda: t.to(place))
    if store.spilled:
        step = _rows_per_copy(store)
        for start in range(0, len(store), step):
            store[start:start + step] = t[start:start + step]
    return store
