"""The public-domain corpus shipped in ``signround/data``: the offline calibration default and held-out text.

Calibration and held-out parts are different works (see ``signround/data/README.md``), so perplexity
and KL divergence measured on :func:`heldout_text` are not flattered by calibrating on it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .files import read_local_file
from .spec import BUNDLED_NAME

__all__ = ["BUNDLED_NAME", "BUNDLED_DESCRIPTION", "bundled_documents", "heldout_text"]

logger = logging.getLogger(__name__)

BUNDLED_DESCRIPTION = "bundled public-domain corpus: King James Bible, Shakespeare, Natsume's Botchan"
_CALIBRATION_FILE = "calibration.jsonl"
_HELDOUT_FILE = "heldout.txt"


# A plain path next to the package (not importlib.resources): signround's data folder is not a package.
_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def _data_file(name: str) -> Path:
    path = _DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"bundled corpus file signround/data/{name} is missing from the installed package")
    return path


def bundled_documents() -> list[str]:
    """The calibration documents of the bundled corpus (one per book, play or chapter)."""
    items = read_local_file(_data_file(_CALIBRATION_FILE))
    if not all(isinstance(i, str) for i in items):
        raise ValueError(f"bundled corpus {_CALIBRATION_FILE} must hold texts only")
    return items  # type: ignore[return-value]


def heldout_text() -> str:
    """Bundled evaluation text (about 82k SmolLM2 tokens), disjoint from every calibration document."""
    return _data_file(_HELDOUT_FILE).read_text(encoding="utf-8")
