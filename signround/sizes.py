"""Byte sizes: parse ``--max_memory`` / ``--max_shard_size`` values, format sizes for logs, read free RAM.

Parsing follows transformers' ``convert_file_size_to_int``: ``KB/MB/GB/TB`` are powers of 10 and
``KiB/MiB/GiB/TiB`` powers of 2, except that units are case-insensitive here (transformers reads a
lowercase ``b`` as bits; nobody means bits for a memory budget) and decimals are allowed ("1.5GB").
"""

from __future__ import annotations

import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .errors import BadInputError

__all__ = ["parse_size", "format_size", "available_memory"]

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
_FORMS = "a byte count (1000000) or a number with a unit: B, KB/MB/GB/TB (powers of 10), KiB/MiB/GiB/TiB (powers of 2), e.g. '5GB', '1.5GiB'"


def parse_size(text: str | int) -> int:
    """Bytes in ``text`` ("5GB" = 5*10**9, "5GiB" = 5*2**30, "1000000" or an int = bytes); fractions round down."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise BadInputError(f"size {text} is negative; expected {_FORMS}")
        return text
    if not isinstance(text, str):
        raise BadInputError(f"size {text!r} is a {type(text).__name__}; expected {_FORMS}")
    match = _SIZE.fullmatch(text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if unit is None:
        raise BadInputError(f"size {text!r} is not understood; expected {_FORMS}")
    try:
        return int(Decimal(match.group(1)) * unit)  # Decimal: "1.1GB" is exactly 1100000000
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimal numbers
        raise BadInputError(f"size {text!r} is not understood; expected {_FORMS}") from exc


def format_size(n: int) -> str:
    """A short binary-unit size for logs: "1.50 GiB", "512.0 MiB", "300.0 KiB", "12 B"."""
    for unit, scale, digits in (("TiB", 2**40, 2), ("GiB", 2**30, 2), ("MiB", 2**20, 1), ("KiB", 2**10, 1)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{n} B"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available(v2: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Room left under this process's cgroup memory limit (containers: MemAvailable shows the host's RAM)."""
    limit = _read_int(v2 / "memory.max")
    if limit is not None:
        used = _read_int(v2 / "memory.current") or 0
        return max(0, limit - used + _stat_value(v2 / "memory.stat", "inactive_file"))
    v1 = v2 / "memory"
    limit = _read_int(v1 / "memory.limit_in_bytes")
    if limit is not None and limit < 2**60:  # v1 writes a huge number for "no limit"
        used = _read_int(v1 / "memory.usage_in_bytes") or 0
        return max(0, limit - used + _stat_value(v1 / "memory.stat", "total_inactive_file"))
    return None


def available_memory() -> int:
    """Bytes of RAM that can still be taken: MemAvailable (or free pages), capped by a cgroup limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024  # the kernel writes kB
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    room = _cgroup_available()
    return available if room is None else min(available, room)
