"""Shared fixtures for the calibration tests: the real SmolLM2 tokenizer (offline) and small data files."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from signround.testing import smollm2_hf_dir

    return AutoTokenizer.from_pretrained(smollm2_hf_dir())


@pytest.fixture
def offline(monkeypatch):
    """The hub is declared unreachable through the environment, as a user would."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def write_jsonl(tmp_path):
    def write(name: str, records: list) -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return str(path)

    return write
