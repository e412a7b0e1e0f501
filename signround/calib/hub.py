"""Hugging Face hub datasets as calibration sources, used only when the hub answers.

The reachability check honours ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` and otherwise opens one TCP
connection in a daemon thread with a hard deadline, so an offline machine (where DNS itself may hang)
gets an answer within seconds instead of ``datasets``' long retry loops.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from urllib.parse import urlparse

__all__ = ["HubUnreachableError", "hub_reachable", "load_hub_texts", "unreachable_error", "HUB_CHECK_TIMEOUT_S"]

logger = logging.getLogger(__name__)

HUB_CHECK_TIMEOUT_S = 3.0
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE_WORDS = {"1", "on", "yes", "true"}


class HubUnreachableError(ConnectionError):
    """A hub dataset was asked for but the Hugging Face hub cannot be reached."""


def _offline_env() -> str | None:
    for name in _OFFLINE_ENV:
        if os.environ.get(name, "").strip().lower() in _TRUE_WORDS:
            return name
    return None


def _endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout_s: float = HUB_CHECK_TIMEOUT_S) -> tuple[bool, str]:
    """(reachable, why): whether one TCP connection to the hub endpoint opens within ``timeout_s``."""
    env = _offline_env()
    if env is not None:
        return False, f"{env} is set"
    host, port = _endpoint()
    result: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append("ok")
        except OSError as e:
            result.append(f"cannot connect to {host}:{port} ({e.__class__.__name__}: {e})")

    thread = threading.Thread(target=connect, name="signround-hub-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not result:
        return False, f"no answer from {host}:{port} within {timeout_s:g} s"
    return result[0] == "ok", result[0]


def unreachable_error(name: str, why: str) -> HubUnreachableError:
    return HubUnreachableError(
        f"calibration dataset {name!r} looks like a Hugging Face hub id, but the hub is not reachable ({why}); "
        "use a local .json/.jsonl/.txt file or the bundled corpus 'signround:bundled'"
    )


def _text_column(columns: list[str], features: dict, name: str) -> str:
    if "text" in columns:
        return "text"
    strings = [c for c in columns if getattr(features.get(c), "dtype", None) in ("string", "large_string")]
    if len(strings) == 1:
        return strings[0]
    raise ValueError(
        f"hub dataset {name!r} has no 'text' column and {len(strings)} string columns ({strings}) among {columns}; "
        "export the texts to a local .jsonl file with a 'text' field"
    )


def load_hub_texts(name: str, split: tuple[str, ...], timeout_s: float = HUB_CHECK_TIMEOUT_S) -> list[str]:
    """Texts of a hub dataset (its 'text' column, or its only string column), in dataset order."""
    ok, why = hub_reachable(timeout_s)
    if not ok:
        raise unreachable_error(name, why)
    import datasets  # heavy; imported only when a hub dataset is really used

    split_expr = "+".join(split)
    try:
        data = datasets.load_dataset(name, split=split_expr)
    except (ConnectionError, TimeoutError, OSError) as e:
        raise unreachable_error(name, f"{e.__class__.__name__}: {e}") from e
    column = _text_column(list(data.column_names), dict(data.features), name)
    texts = [t for t in data[column] if isinstance(t, str)]
    logger.info("loaded %d texts from hub dataset %s (split %s, column %r)", len(texts), name, split_expr, column)
    return texts
