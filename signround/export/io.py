"""Writing an output directory safely: never over something signround did not write, never half-written.

Policy (one home, used by every writer, by ``convert`` and by the pre-flight check before a model loads):

- ``check_output_target`` refuses, before anything durable is written, a target that is a file (or
  under one), a non-empty directory without ``signround.json`` (never ours, whatever ``overwrite``
  says), a previous signround output unless ``overwrite``, and a location the user cannot write (a
  probe file is created and removed: root ignores mode bits, so only trying tells).
- ``atomic_output_dir`` writes into a sibling ``.NAME.partial-<pid>-<random>`` and renames it into
  place at the end. Directories get the user's umask, not ``mkdtemp``'s 0700.
- Interruptions: SIGTERM during the write raises ``SystemExit`` (a handler is installed only around
  the write, only when SIGTERM has its default action and we are on the main thread), so the partial
  directory is removed on the way out. SIGKILL cannot be caught: the next run for the same NAME
  removes partials whose pid is no longer alive (partials of live processes are left alone).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import OutputPathError
from ..model.arch import tied_embeddings
from ..record import RUN_FILE

__all__ = ["check_output_target", "atomic_output_dir", "remove_stale_partials", "save_tensors", "save_model_files",
           "float_state_dict", "DEFAULT_SHARD_BYTES"]

logger = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size="5GB"
_CHOOSE = "choose another output_dir"


def _probe_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``; OSError if that is not possible (the only test root cannot bypass)."""
    probe = folder / f".signround-probe-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    os.unlink(probe)


def _nearest_existing(path: Path) -> Path:
    for anc in path.parents:
        if anc.exists() or anc.is_symlink():
            return anc
    return Path(path.anchor or ".")


def check_output_target(target: "str | Path", overwrite: bool = False) -> None:
    """Raise ``OutputPathError`` if writing ``target`` could replace something not ours, or cannot succeed.

    Writes nothing durable (the writability probe is removed at once).
    """
    target = Path(target).absolute()
    anc = _nearest_existing(target)
    if not anc.is_dir():
        raise OutputPathError(f"output {target}: {anc} is a file, not a directory; {_CHOOSE}")
    if target.is_symlink():
        raise OutputPathError(f"output {target} is a symbolic link; give the directory it points to, or {_CHOOSE}")
    if target.exists():
        if not target.is_dir():
            raise OutputPathError(f"output {target} exists and is not a directory; signround never replaces it: "
                                  f"remove it yourself or {_CHOOSE}")
        if any(target.iterdir()):
            if not (target / RUN_FILE).is_file():
                raise OutputPathError(f"output {target} is a non-empty directory that signround did not write (no "
                                      f"{RUN_FILE}); it is never replaced, even with overwrite: {_CHOOSE}")
            if not overwrite:
                raise OutputPathError(f"output {target} holds a previous signround output; pass --overwrite / "
                                      f"overwrite=True to replace it, or {_CHOOSE}")
    try:
        _probe_writable(anc)
    except OSError as e:
        raise OutputPathError(f"output {target}: cannot write in {anc} ({e.strerror or e}); {_CHOOSE}") from e


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process. A zombie (killed, not yet reaped: an orphaned rank of a killed
    torchrun waits for init) answers ``kill(pid, 0)`` but runs nothing, so it is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS) or gone meanwhile: trust kill()
        return True
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")  # the state follows the parenthesised name


def _siblings(target: Path, kind: str) -> Iterator[tuple[Path, int]]:
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.{kind}-(\d+)-[0-9a-f]+$")
    if not target.parent.is_dir():
        return
    for p in target.parent.iterdir():
        m = pattern.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            yield p, int(m.group(1))


def remove_stale_partials(target: "str | Path") -> list[Path]:
    """Remove ``.NAME.partial-<pid>-*`` siblings of ``target`` left by processes that are gone; returns them.

    A previous output moved aside by a run killed mid-swap (``.NAME.old-<pid>-*``) is put back when
    ``target`` is missing, else removed.
    """
    target = Path(target).absolute()
    removed = []
    for p, pid in _siblings(target, "partial"):
        if not _pid_alive(pid):
            logger.info("removing %s, left by process %d which is gone", p, pid)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p, pid in _siblings(target, "old"):
        if _pid_alive(pid):
            continue
        if not target.exists():
            logger.warning("restoring the previous output %s from %s (a run was killed while replacing it)", target, p)
            p.rename(target)
        else:
            logger.info("removing %s, a replaced output left by process %d which is gone", p, pid)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _make_partial(target: Path) -> Path:
    while True:
        tmp = _sibling(target, "partial")
        try:
            tmp.mkdir()  # mode 0o777 & ~umask
            return tmp
        except FileExistsError:
            continue


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` (so ``finally`` blocks run) if nobody else handles it."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    try:
        check_output_target(target, overwrite)  # anything that appeared during the run is still refused
    except OutputPathError as e:
        raise OutputPathError(f"{e}. The finished output is kept in {tmp}: move it away before the next run, "
                              f"which removes it") from e
    if not (target.is_dir() and any(target.iterdir())):
        os.rename(tmp, target)  # replaces an empty directory atomically
        return
    old = _sibling(target, "old")  # a previous signround output, overwrite=True (checked above)
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_output_dir(target: "str | Path", overwrite: bool = False) -> Iterator[Path]:
    """Yield a sibling temporary directory that becomes ``target`` only if the block finishes without error.

    ``target`` may be missing, an empty directory, or (only with ``overwrite``) a previous signround output.
    """
    target = Path(target).absolute()
    check_output_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    tmp = _make_partial(target)
    keep = False  # a finished output refused at the end is kept (the error says where)
    try:
        with _sigterm_exits():
            yield tmp
            try:
                _move_into_place(tmp, target, overwrite)
            except OutputPathError:
                keep = True
                raise
    finally:
        if not keep and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def float_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors, with weights shared by tying (lm_head = embeddings) stored once."""
    tied_out = None
    if tied_embeddings(model):
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        tied_out = next((n for n, m in model.named_modules() if m is head), None) if head is not None else None
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if tied_out is not None and name == f"{tied_out}.weight":
            continue
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def save_tensors(tensors: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """Write safetensors shards named like transformers' (model.safetensors or model-0000i-of-0000n.safetensors).

    Streamed one tensor at a time (no copy of the whole output in memory); on an error no file is left.
    """
    from .shards import ShardedSafetensorsWriter  # here: shards imports this module for DEFAULT_SHARD_BYTES

    with ShardedSafetensorsWriter(folder, max_shard_bytes) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
        return writer.close()


def save_model_files(model: torch.nn.Module, tokenizer: Any, folder: Path, config_extra: dict[str, Any],
                     dtype: torch.dtype | None = None) -> None:
    """config.json (with ``config_extra`` merged in), generation_config.json and the tokenizer."""
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    config.update(config_extra)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(folder)
        except (ValueError, OSError) as e:  # an invalid generation config should not sink the export
            logger.warning("generation_config not saved: %s", e)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)

