"""Hub datasets: used only when reachable, a fast clear error otherwise, and the default's fallback."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from signround.calib import HubUnreachableError, get_calibration_data
from signround.calib import dataset as dataset_module
from signround.calib import hub

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def test_offline_env_gives_a_clear_error_at_once(tokenizer, offline):
    start = time.monotonic()
    with pytest.raises(HubUnreachableError) as err:
        get_calibration_data(tokenizer, "NeelNanda/pile-10k:num=4", nsamples=4, seqlen=8)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "'NeelNanda/pile-10k'" in message and "HF_HUB_OFFLINE is set" in message
    assert "hub is not reachable" in message and "'signround:bundled'" in message


def test_real_check_answers_fast(tokenizer, monkeypatch):
    for name in OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    start = time.monotonic()
    reachable, why = hub.hub_reachable()
    assert time.monotonic() - start < 10
    if reachable:
        pytest.skip("this machine reaches the hub")
    with pytest.raises(HubUnreachableError, match="signround:bundled"):
        get_calibration_data(tokenizer, "someone/some-dataset", nsamples=2, seqlen=8)
    assert time.monotonic() - start < 10


def test_refused_endpoint_is_unreachable(monkeypatch):
    for name in OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port on loopback: nothing listens
    reachable, why = hub.hub_reachable(timeout_s=2.0)
    assert not reachable and "127.0.0.1:9" in why


def test_hanging_connection_is_cut_off(monkeypatch):
    for name in OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))
    start = time.monotonic()
    reachable, why = hub.hub_reachable(timeout_s=0.3)
    assert time.monotonic() - start < 2
    assert not reachable and "no answer" in why and "0.3 s" in why


def _fake_hub(monkeypatch, load):
    import datasets

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout_s=hub.HUB_CHECK_TIMEOUT_S: (True, "ok"))
    monkeypatch.setattr(dataset_module, "hub_reachable", lambda timeout_s=hub.HUB_CHECK_TIMEOUT_S: (True, "ok"))
    monkeypatch.setattr(datasets, "load_dataset", load)


def test_reachable_hub_dataset_reads_its_text_column(tokenizer, monkeypatch):
    import datasets

    texts = ["A long enough sentence about rivers and mountains in the north.", "Another long enough sentence here."]
    calls = []

    def load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"id": [1, 2], "content": texts})

    _fake_hub(monkeypatch, load)
    data = get_calibration_data(tokenizer, "org/set:split=train+test", nsamples=2, seqlen=6)
    assert calls == [("org/set", "train+test")]
    assert sorted(data.input_ids.tolist()) == sorted(tokenizer(t)["input_ids"][:6] for t in texts)
    assert "hub dataset org/set: 2 samples" in data.source


def test_hub_dataset_without_a_text_column(tokenizer, monkeypatch):
    import datasets

    _fake_hub(monkeypatch, lambda name, split: datasets.Dataset.from_dict({"q": ["a"], "a": ["b"]}))
    with pytest.raises(ValueError, match="no 'text' column and 2 string columns"):
        get_calibration_data(tokenizer, "org/qa", nsamples=1, seqlen=2)


def test_default_falls_back_when_the_hub_load_fails(tokenizer, monkeypatch, caplog):
    def load(name, split):
        raise ConnectionError("proxy said no")

    _fake_hub(monkeypatch, load)
    with caplog.at_level(logging.WARNING):
        data = get_calibration_data(tokenizer, nsamples=4, seqlen=64)
    assert "could not load NeelNanda/pile-10k" in caplog.text and "proxy said no" in caplog.text
    assert data.input_ids.shape == (4, 64) and data.source.startswith("signround:bundled")


def test_default_uses_pile_when_the_hub_answers(tokenizer, monkeypatch, caplog):
    import datasets

    calls = []

    def load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"text": [f"document number {i} has a few words in it" for i in range(5)]})

    _fake_hub(monkeypatch, load)
    with caplog.at_level(logging.INFO, logger="signround.calib"):
        data = get_calibration_data(tokenizer, nsamples=3, seqlen=5)
    assert calls == [("NeelNanda/pile-10k", "train")]
    assert "using NeelNanda/pile-10k from the Hugging Face hub" in caplog.text
    assert data.input_ids.shape == (3, 5) and data.source == "hub dataset NeelNanda/pile-10k: 3 samples (seqlen 5)"
