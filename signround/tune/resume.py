"""Checkpoints of the block loop, so a run killed mid-way continues from its last finished block.

The work directory is a hidden sibling of the first output, ``<output_dir>/.<first target name>.work/``
(created with the user's umask; signround never writes inside or over anything the user owns). It holds:

- ``owner``: the pid of the run using it (another live process using the same directory is refused);
- ``fingerprint.json``: what fixes the results (the resolved run record minus the fields that do not
  change them, the plan, the model source, a hash of the calibration rows). Another command or model
  refuses the directory and says which fields differ; the directory is left alone.
- ``block-NNNNN.pt``: block N's results: its layers' codes (what ``LayerQuantizer.result()`` returned),
  their report records, the block's report fields and its importance matrices.
- ``chain-NNNNN.pt``: the inputs of block N (the ``_Chain`` tensors ``fp`` and ``q``, bit-exact). It is
  written after ``block-(N-1)``, so its presence means every block before N is finished; the previous
  one is removed after it (only the latest is kept: it is as large as the cached activations).

Every file is written to a temporary name in the directory and renamed, so a kill mid-write never
leaves a file that looks complete. The tuning is a function of (codes so far, chain tensors, seed):
each block's sampler is seeded afresh (``IndexSampler(train_idx, seed)``), so the resumed blocks are the
uninterrupted run's bit for bit.

Data parallel (N ranks sharing the directory): rank 0 owns it (fingerprint, owner, ``block-*``) and every
rank writes its own shard of the chain, ``chain-NNNNN.rankR.pt``; a rank removes its older chain file only
after a barrier, so every rank still holds the chain of the last block all of them finished, which they
agree on by a reduction when resuming. The world size is part of the fingerprint: the shards are 1/N of
the rows, so another world size refuses the directory.
"""

from __future__ import annotations

from collections.abc import Sequence

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInputError
from ..export.io import _pid_alive
from .distributed import SINGLE_PROCESS, DataParallel

__all__ = ["WorkDir", "BlockPart", "Progress", "run_fingerprint", "work_dir_for", "check_resumable", "open_work_dir",
           "open_shared_work_dir", "load_progress", "save_block", "remove_work_dir"]

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
OWNER_FILE = "owner"  # the pid of the process using the directory: a second live run of it is refused
_BLOCK = re.compile(r"^block-(\d{5})\.pt$")
_CHAIN = re.compile(r"^chain-(\d{5})(?:\.rank(\d+))?\.pt$")
# Run record fields that never change the codes: where the activations are cached, thread count, why a dtype
# was chosen, and the library versions.
_NOT_RESULTS_RUNTIME = ("threads", "low_gpu_mem_usage", "tune_dtype_reason", "max_memory")


@dataclass(frozen=True)
class WorkDir:
    """An opened work directory whose fingerprint matches this run (``open_work_dir``)."""

    path: Path


@dataclass(frozen=True)
class BlockPart:
    """What one finished block added to the run's result (``driver.QuantizeResult``), keyed by layer name."""

    weights: dict[str, Any]  # the codes: QuantizedWeight, GGUFQuantized... (whatever the layer state returned)
    layers: dict[str, dict]  # per-layer report records
    info: dict  # the block's report fields
    imatrix: dict[str, torch.Tensor]  # importance matrices of its layers
    act_max: dict[str, torch.Tensor] = field(default_factory=dict)  # calibrated input maxima (static activations)


@dataclass
class Progress:
    """What the finished blocks left: their saved parts (in order) and the next block's inputs."""

    next_block: int
    blocks: "Sequence[BlockPart]" = ()  # read one at a time when iterated (a large model's codes never all at once)
    fp: torch.Tensor | None = None
    q: torch.Tensor | None = None


def _hash_tensor(h: "hashlib._Hash", t: torch.Tensor | None) -> None:
    if t is None:
        h.update(b"none")
        return
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def run_fingerprint(record: dict[str, Any], plan: dict[str, Any], source: str, input_ids: torch.Tensor | None,
                    attention_mask: torch.Tensor | None, world_size: int = 1) -> dict[str, Any]:
    """What fixes the results of a run, as a JSON value (two runs with equal fingerprints compute the same codes).

    ``world_size``: the data-parallel ranks, each of which checkpoints its own 1/N of the block inputs."""
    record = {k: v for k, v in record.items() if k != "versions"}
    if isinstance(record.get("runtime"), dict):
        record["runtime"] = {k: v for k, v in record["runtime"].items() if k not in _NOT_RESULTS_RUNTIME}
    h = hashlib.sha256()
    _hash_tensor(h, input_ids)
    _hash_tensor(h, attention_mask)
    return json.loads(json.dumps({"run": record, "plan": plan, "model": source, "calibration_sha256": h.hexdigest(),
                                  "world_size": world_size}, default=str))


def work_dir_for(first_target: "str | Path") -> Path:
    """The work directory of a run whose first output is ``first_target``: a hidden sibling of it."""
    target = Path(first_target).absolute()
    return target.with_name(f".{target.name}.work")


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k, "<unset>"), new.get(k, "<unset>"), f"{path}.{k}" if path else str(k))
        return out
    return [] if old == new else [f"{path or 'value'}: {_short(old)} then, {_short(new)} now"]


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _chain_file(path: Path, n: int, parallel: DataParallel) -> Path:
    return path / (f"chain-{n:05d}.rank{parallel.rank}.pt" if parallel.active else f"chain-{n:05d}.pt")


def _own_chains(path: Path, parallel: DataParallel) -> list[int]:
    """The numbers of this rank's chain files (a single process: the ones without a rank)."""
    rank = str(parallel.rank) if parallel.active else None
    return [int(m.group(1)) for p in path.iterdir() if (m := _CHAIN.match(p.name)) and m.group(2) == rank]


def _finished(path: Path, parallel: DataParallel = SINGLE_PROCESS) -> int:
    """Blocks finished in ``path`` by this rank: its highest chain file's number (0: none); on rank 0 (the
    one that writes them) only when the block files before it are all there."""
    blocks = {int(m.group(1)) for p in path.iterdir() if (m := _BLOCK.match(p.name))}
    return next((n for n in sorted(_own_chains(path, parallel), reverse=True)
                 if not parallel.is_main or all(i in blocks for i in range(n))), 0)


def _owner(path: Path) -> int | None:
    try:
        return int((path / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _claim(path: Path) -> None:
    _atomic_write(path / OWNER_FILE, lambda f: f.write(f"{os.getpid()}\n".encode()))


def check_resumable(path: "str | Path") -> None:
    """BadInputError unless ``path`` holds a checkpoint (the cheap check ``--resume`` runs before the model loads)."""
    path = Path(path).absolute()
    if not (path / FINGERPRINT_FILE).is_file():
        raise BadInputError(f"resume: nothing to resume, no checkpoint in {path} (a run with the same command and "
                            f"output_dir makes it, and removes it after a successful export)")


def open_work_dir(path: "str | Path", fingerprint: dict[str, Any], require: bool) -> tuple[WorkDir, int]:
    """Open (or create) the work directory for a run of this ``fingerprint``; returns it and its finished blocks.

    A directory left by another command or model is refused (BadInputError naming the fields that differ)
    and left as it is; so is a path that is not a directory signround made. ``require`` (``--resume``):
    fail unless there is at least one finished block to continue from.
    """
    path = Path(path).absolute()
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise BadInputError(f"work directory {path} exists and is not a directory signround made; remove it yourself")
    if path.is_dir() and any(path.iterdir()):
        owner = _owner(path)
        if owner is not None and owner != os.getpid() and _pid_alive(owner):
            raise BadInputError(f"work directory {path} is in use by the running process {owner} (the same command "
                                f"is running): wait for it, or choose another output_dir")
        fp_file = path / FINGERPRINT_FILE
        if not fp_file.is_file():
            raise BadInputError(f"work directory {path} has no {FINGERPRINT_FILE}: it was not left by signround; "
                                f"remove it yourself or choose another output_dir")
        try:
            old = json.loads(fp_file.read_text())
        except (OSError, ValueError) as e:
            raise BadInputError(f"work directory {path}: {FINGERPRINT_FILE} is unreadable ({e}); remove the "
                                f"directory to start afresh") from e
        worlds = (old.get("world_size", 1) if isinstance(old, dict) else 1, fingerprint.get("world_size", 1))
        if worlds[0] != worlds[1]:
            raise BadInputError(f"work directory {path} holds the checkpoint of a run of {worlds[0]} process(es), this "
                                f"run has {worlds[1]}: each process saved its own 1/{worlds[0]} of the block inputs, "
                                f"so resume with {worlds[0]} (torchrun --nproc_per_node {worlds[0]}), or remove the "
                                f"directory to start afresh")
        diff = _differences(old, fingerprint)
        if diff:
            raise BadInputError(f"work directory {path} holds the checkpoint of a different run ({'; '.join(diff[:4])}"
                                f"{'; ...' if len(diff) > 4 else ''}); rerun the same command to resume it, or "
                                f"remove the directory to start afresh")
        done = _finished(path)
        if require and done == 0:
            raise BadInputError(f"resume: work directory {path} holds no finished block yet; run without --resume")
        for p in path.iterdir():  # temporary files of a killed write
            if p.name.startswith(".tmp-"):
                p.unlink()
        _claim(path)
        return WorkDir(path), done
    if require:
        check_resumable(path)
    path.mkdir(parents=True, exist_ok=True)  # mode 0o777 & ~umask
    _claim(path)
    _atomic_write(path / FINGERPRINT_FILE,
                  lambda f: f.write((json.dumps(fingerprint, indent=1, sort_keys=True) + "\n").encode()))
    return WorkDir(path), 0


def open_shared_work_dir(path: "str | Path", fingerprint: dict[str, Any], require: bool,
                         parallel: DataParallel) -> WorkDir:
    """``open_work_dir`` for every rank of a run: rank 0 opens (or refuses) the directory, the others follow it."""
    if not parallel.active:
        return open_work_dir(path, fingerprint, require)[0]
    refused = None
    if parallel.is_main:
        try:
            open_work_dir(path, fingerprint, require)
        except BadInputError as e:
            refused = str(e)
    refused = parallel.from_main(refused)
    if refused is not None:
        raise BadInputError(refused)
    return WorkDir(Path(path).absolute())


def load_progress(work: WorkDir, parallel: DataParallel = SINGLE_PROCESS) -> Progress:
    """The finished blocks' parts and the next block's inputs (``next_block`` 0: nothing finished yet).

    Data parallel: the last block every rank finished (each rank still holds its chain file of it)."""
    n = parallel.reduce_min(_finished(work.path, parallel))
    if n == 0:
        return Progress(0)
    chain = torch.load(_chain_file(work.path, n, parallel), map_location="cpu", weights_only=True)
    return Progress(n, _SavedParts([work.path / f"block-{i:05d}.pt" for i in range(n)]), chain["fp"], chain["q"])


class _SavedParts(Sequence):
    """The finished blocks' parts, each read from its file when asked for."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> BlockPart:  # type: ignore[override]
        # Our own files, in a directory we made and whose fingerprint matched: they hold dataclasses of the codes.
        return torch.load(self.files[i], map_location="cpu", weights_only=False)


def save_block(work: WorkDir, i: int, part: BlockPart, fp: torch.Tensor, q: torch.Tensor | None,
               parallel: DataParallel = SINGLE_PROCESS) -> None:
    """Record block ``i`` as finished: its part (rank 0), then this rank's inputs of block i+1 (each file written
    atomically); the older chain file goes once every rank has written its new one."""
    if parallel.is_main:
        _atomic_write(work.path / f"block-{i:05d}.pt", lambda f: torch.save(part, f))
    chain = {"fp": fp.detach().cpu(), "q": None if q is None else q.detach().cpu()}
    _atomic_write(_chain_file(work.path, i + 1, parallel), lambda f: torch.save(chain, f))
    parallel.barrier()
    for n in _own_chains(work.path, parallel):
        if n != i + 1:
            _chain_file(work.path, n, parallel).unlink(missing_ok=True)


def remove_work_dir(work: WorkDir) -> None:
    shutil.rmtree(work.path, ignore_errors=True)
