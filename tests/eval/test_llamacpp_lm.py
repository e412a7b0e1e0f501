"""The llama.cpp lm-eval LM on a tiny f32 GGUF: rolling log-likelihood in HFLM's windows, checked against a
direct computation with the same weights in torch, against lm-eval's HFLM, and against no windowing."""

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("llama_cpp")

from signround.eval.llamacpp_lm import make_llamacpp_lm  # noqa: E402
from signround.export.gguf import export_gguf  # noqa: E402
from tests.gguf.gguf_testlib import tiny_arch_model, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.interop

TEXT = ("The quick brown fox jumps over the lazy dog. Numbers 12345 and symbols appear here. "
        "A second sentence follows the first one, and then a third sentence ends the short paragraph. ") * 2
WINDOW = 32


class _Req:
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tok = tiny_arch_model("llama"), tiny_tokenizer()
    path = export_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny.gguf", "f32")
    lm = make_llamacpp_lm(path, max_length=WINDOW, n_threads=1)
    yield model, tok, lm
    lm.close()


def _windowed_torch(model, ids, bos, window):
    """Sum of log p(token) where each chunk of ``window`` tokens sees at most ``window`` inputs (BOS first)."""
    full = [bos] + ids
    total = 0.0
    for start in range(0, len(ids), window):
        end = min(start + window, len(ids))  # predict ids[start:end] = full[start+1:end+1]
        lo = max(0, end - window)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full[lo:end]])).logits[0].double(), -1)
        for j in range(start, end):  # input position of ids[j] is full index j, row j - lo
            total += float(logp[j - lo, full[j + 1]])
    return total


def test_rolling_loglikelihood_uses_hflm_windows(tiny):
    model, tok, lm = tiny
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert lm.tok_encode(TEXT) == ids and len(ids) > 3 * WINDOW
    ours = lm.loglikelihood_rolling([_Req(TEXT)])[0]
    direct = _windowed_torch(model, ids, tok.bos_token_id, WINDOW)
    unwindowed = _windowed_torch(model, ids, tok.bos_token_id, len(ids))
    assert abs(ours - direct) < 2e-3 * abs(direct), (ours, direct)
    assert abs(ours - direct) < 0.2 * abs(ours - unwindowed), (ours, direct, unwindowed)  # the test can tell


def test_agrees_with_lm_evals_hflm(tiny):
    from lm_eval.models.huggingface import HFLM

    model, tok, lm = tiny
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=1, max_length=WINDOW)
    reqs = [_Req(TEXT)]
    a, b = lm.loglikelihood_rolling(reqs)[0], hf.loglikelihood_rolling(reqs, disable_tqdm=True)[0]
    assert abs(a - b) < 2e-3 * abs(b), (a, b)
    pairs = [_Req("The quick brown fox", " jumps over"), _Req("Numbers", " 12345 and"), _Req("", "A second")]
    ours, theirs = lm.loglikelihood(pairs, disable_tqdm=True), hf.loglikelihood(pairs, disable_tqdm=True)
    np.testing.assert_allclose([x[0] for x in ours], [x[0] for x in theirs], rtol=2e-3, atol=1e-3)
    assert [x[1] for x in ours] == [x[1] for x in theirs]


def test_generate_until_is_greedy_and_stops(tiny):
    model, tok, lm = tiny
    text = lm.generate_until([_Req("The quick brown", {"until": ["\n"], "max_gen_toks": 8})])[0]
    ids = tok("The quick brown", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        greedy = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    assert text == tok.decode(greedy).split("\n")[0]
