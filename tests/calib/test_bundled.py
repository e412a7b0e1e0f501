"""The bundled public-domain corpus: the offline default meets the defaults, and held-out text is disjoint."""

from __future__ import annotations

import logging
import re

from signround.calib import get_calibration_data, heldout_text
from signround.calib.bundled import bundled_documents


def _word_shingles(text: str, n: int = 12) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_offline_default_is_the_bundled_corpus_at_full_size(tokenizer, offline, caplog):
    with caplog.at_level(logging.INFO, logger="signround.calib"):
        data = get_calibration_data(tokenizer)
    assert "hub is not reachable (HF_HUB_OFFLINE is set); using signround:bundled" in caplog.text
    assert data.input_ids.shape == (128, 2048) and data.attention_mask is None
    assert data.source == (
        "signround:bundled (bundled public-domain corpus: King James Bible, Shakespeare, Natsume's Botchan): "
        "128 samples (seqlen 2048)"
    )
    # Every row is one of the 2048-token chunks of the documents joined with EOS, and no chunk repeats.
    stream = [t for doc in bundled_documents() for t in tokenizer(doc, add_special_tokens=False)["input_ids"] + [2]]
    chunks = {tuple(stream[i : i + 2048]) for i in range(0, len(stream) - 2047, 2048)}
    assert len(chunks) >= 190
    picked = {tuple(r) for r in data.input_ids.tolist()}
    assert len(picked) == 128 and picked <= chunks


def test_bundled_by_name_mixes_with_other_data(tokenizer, write_jsonl):
    path = write_jsonl("sevens.jsonl", [{"input_ids": [7] * 64}] * 3)
    data = get_calibration_data(tokenizer, f"{path}:num=2,signround:bundled", nsamples=6, seqlen=64)
    assert data.input_ids.shape == (6, 64)
    assert sum(r == [7] * 64 for r in data.input_ids.tolist()) == 2
    assert data.source.endswith("sevens.jsonl: 2 samples; signround:bundled (bundled public-domain corpus: "
                                "King James Bible, Shakespeare, Natsume's Botchan): 4 samples (seqlen 64)")
    mixed = get_calibration_data(tokenizer, "signround:bundled:num=5:concat=False", nsamples=5, seqlen=256)
    assert mixed.input_ids.shape == (5, 256)  # whole documents (books, plays, chapters) truncated, not chunks
    starts = {tokenizer.decode(r[:3]) for r in mixed.input_ids.tolist()}
    assert all(s.startswith(("The Book of", "Botchan", "Hamlet", "Julius", "The Tempest", "A Midsummer", "Much Ado",
                             "A NOTE")) for s in starts), starts


def test_heldout_size_and_disjointness(tokenizer):
    text = heldout_text()
    n_tokens = len(tokenizer(text)["input_ids"])
    assert 50_000 <= n_tokens <= 100_000
    assert text.startswith("The Book of Ruth")
    calibration = _word_shingles("\n".join(bundled_documents()))
    held = _word_shingles(text)
    assert len(held) > 40_000 and len(calibration) > 250_000
    assert not (held & calibration)  # no 12-word passage in common

