"""The real SmolLM2-135M-Instruct: perplexity and KL bounds of each method, export and load-back.

Model tier (``-m model``): each test quantizes the whole 30-block model with small calibration
settings so that the tier stays within a few minutes on two cores.
"""

from __future__ import annotations

import copy

import pytest
import torch

from signround import AutoRound, load_quantized
from signround.calib import heldout_text
from signround.eval.metrics import evaluate, windows

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    from signround.model.loading import load_model

    return load_model(str(smollm2_dir), dtype="float32")


@pytest.fixture(scope="module")
def rows(smol):
    return windows(smol.tokenizer(heldout_text(), return_tensors="pt").input_ids, 256, 6)


def _quantize(smol, **kw):
    model = copy.deepcopy(smol.model)
    ar = AutoRound(model, smol.tokenizer, nsamples=kw.pop("nsamples", 8), seqlen=kw.pop("seqlen", 256),
                   batch_size=4, show_progress=False, **kw)
    ar.quantize()
    return ar


@pytest.fixture(scope="module")
def w4_results(smol, rows):
    out = {}
    for name, kw in {"rtn": dict(iters=0, disable_opt_rtn=True), "opt_rtn": dict(iters=0),
                     "signround": dict(iters=12)}.items():
        ar = _quantize(smol, scheme="W4A16", **kw)
        out[name] = (ar, evaluate(ar.model, rows, smol.model))
    return out


def test_w4_perplexity_stays_close_to_float(w4_results):
    for name, (_, res) in w4_results.items():
        assert res.ppl < 1.6 * res.ppl_float, (name, res)
    assert w4_results["signround"][1].ppl < 1.25 * w4_results["signround"][1].ppl_float


def test_w4_kl_ordering_rtn_opt_rtn_signround(w4_results):
    kl = {k: r.kl for k, (_, r) in w4_results.items()}
    assert kl["opt_rtn"] < kl["rtn"] * 0.9, kl
    assert kl["signround"] < kl["opt_rtn"] * 0.8, kl
    assert 0 < kl["signround"] < 0.3, kl


def test_w2g64_rtn_collapses_and_signround_does_not(smol, rows):
    rtn = evaluate(_quantize(smol, scheme="W2A16G64", iters=0, disable_opt_rtn=True).model, rows, smol.model)
    sr = evaluate(_quantize(smol, scheme="W2A16G64", iters=12).model, rows, smol.model)
    assert rtn.ppl > 10 * rtn.ppl_float, rtn  # plain 2-bit rounding destroys this model
    assert sr.kl < 0.5 * rtn.kl and sr.ppl < rtn.ppl / 5, (sr, rtn)


def test_export_and_load_back_gives_identical_logits(w4_results, tmp_path):
    ar, _ = w4_results["signround"]
    out = ar.save_quantized(tmp_path, format="auto_round,fake")
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314, 7042, 30]])
    with torch.no_grad():
        ref = ar.model(ids).logits
        for folder in out:
            got = load_quantized(folder)(ids).logits
            assert torch.equal(got, ref), folder
    log = (out[0] / "quant_log.json").read_text()
    assert '"loss_before"' in log and '"weight_rel_err"' in log
