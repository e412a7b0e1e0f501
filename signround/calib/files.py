"""Read calibration items from local ``.json``, ``.jsonl`` and ``.txt`` files.

An item is either a text (``str``) or a row of token ids (``list[int]``), which is used as it is.
Accepted records follow AutoRound's local loader (reference §7), plus plain text files:

- ``.json``: a list of records, or a dict whose values are records (or lists of records);
- ``.jsonl``: one record per line;
- a record: a string, a dict with ``"text"``, a dict with ``"input_ids"`` (token ids, or a string),
  or a dict with a single key whose value is a string;
- ``.txt``: documents separated by blank lines (a file without blank lines is one document).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

__all__ = ["Item", "LOCAL_SUFFIXES", "read_local_file", "parse_record"]

logger = logging.getLogger(__name__)

Item = str | list[int]
LOCAL_SUFFIXES = (".json", ".jsonl", ".txt")


def parse_record(record: object, where: str) -> Item:
    """One JSON record -> an item; ``where`` names the file and position for the error message."""
    if isinstance(record, str):
        return record
    if isinstance(record, list) and record and all(isinstance(t, int) and not isinstance(t, bool) for t in record):
        return list(record)
    if isinstance(record, dict):
        if "text" in record and isinstance(record["text"], str):
            return record["text"]
        if "input_ids" in record:
            ids = record["input_ids"]
            if isinstance(ids, str):
                return ids
            if isinstance(ids, list) and ids and all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                return list(ids)
            raise ValueError(f"{where}: 'input_ids' must be a non-empty list of integers or a string")
        if len(record) == 1:
            (value,) = record.values()
            if isinstance(value, str):
                return value
        raise ValueError(
            f"{where}: a record with keys {sorted(record)} has no text; expected a 'text' string, "
            "'input_ids', or a single key holding a string"
        )
    raise ValueError(f"{where}: expected a string, a list of token ids or an object, got {type(record).__name__}")


def _read_json(path: Path) -> list[Item]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        records = []
        for value in data.values():
            is_column = isinstance(value, list) and not all(isinstance(t, int) for t in value)
            records.extend(value if is_column else [value])
    elif isinstance(data, list):
        records = data
    else:
        raise ValueError(f"{path}: expected a JSON list or object at the top level, got {type(data).__name__}")
    return [parse_record(r, f"{path} item {i}") for i, r in enumerate(records)]


def _read_jsonl(path: Path) -> list[Item]:
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {lineno}: not valid JSON ({e})") from None
            items.append(parse_record(record, f"{path} line {lineno}"))
    return items


def _read_txt(path: Path) -> list[Item]:
    text = path.read_text(encoding="utf-8")
    return [doc.strip() for doc in re.split(r"\n[ \t]*\n", text) if doc.strip()]


def read_local_file(path: str | Path) -> list[Item]:
    """All items of a local calibration file, in file order."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"calibration dataset file not found: {path}")
    if path.is_dir():
        raise ValueError(f"calibration dataset {path} is a directory; pass a {', '.join(LOCAL_SUFFIXES)} file")
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".txt": _read_txt}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"calibration dataset {path} has an unsupported extension; supported: {', '.join(LOCAL_SUFFIXES)}")
    try:
        items = reader(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if not items:
        raise ValueError(f"calibration dataset {path} contains no samples")
    logger.debug("read %d items from %s", len(items), path)
    return items
