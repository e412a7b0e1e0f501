"""``signround.json``: the run record written next to every output, and the model sources it names.

One home for reading and writing the record and for resolving ``pkg:NAME`` sources (the one
``.gguf`` file inside an installed Python package), so every command reads them the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .errors import BadInputError

__all__ = ["RUN_FILE", "read_run", "write_run", "resolve_source", "recorded_float_model", "source_name", "float_model_note"]

logger = logging.getLogger(__name__)

RUN_FILE = "signround.json"
PROVENANCE_FILE = "signround_provenance.json"  # beside a float checkpoint that is really a dequantized GGUF
PKG_PREFIX = "pkg:"


def read_run(folder: "str | Path") -> dict[str, Any]:
    """The run record of an output directory (or of the directory holding an output file); {} when absent."""
    folder = Path(folder)
    path = (folder if folder.is_dir() else folder.parent) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise BadInputError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record


def write_run(folder: Path, record: dict[str, Any]) -> None:
    """Write the run record (keys sorted, so the same run gives the same bytes)."""
    (Path(folder) / RUN_FILE).write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")


def resolve_source(source: str) -> str:
    """``pkg:NAME`` -> the path of the .gguf file inside that installed package; anything else unchanged."""
    if source.startswith(PKG_PREFIX):
        from .testing import package_gguf_path

        return str(package_gguf_path(source[len(PKG_PREFIX):]))
    return source


def source_name(source: str) -> str:
    """A model's short name for output directories: the folder name, or the .gguf file's stem."""
    p = Path(resolve_source(source).rstrip("/"))
    name = p.stem if p.suffix == ".gguf" else p.name
    return name or "model"


def float_model_note(source: str) -> str | None:
    """What the float model of a comparison really is, when it is not a float checkpoint (a dequantized GGUF)."""
    path = Path(source)
    if path.suffix == ".gguf":
        return f"dequantized from the GGUF file {path.name}: figures are against that dequantized model"
    provenance = path / PROVENANCE_FILE
    if path.is_dir() and provenance.is_file():
        gguf = json.loads(provenance.read_text()).get("dequantized_from", "a GGUF file")
        return f"dequantized from {gguf}: figures are against that dequantized model"
    return None


def recorded_float_model(folder: "str | Path") -> str | None:
    """The float model an output was quantized from, if its record names one that exists here (resolved)."""
    source = read_run(folder).get("source_model") or None
    if source is None:
        return None
    if source.startswith(PKG_PREFIX) or Path(source).exists():
        return resolve_source(source)
    logger.warning("source model %r recorded in %s is not found here; pass --float_model", source, RUN_FILE)
    return None
