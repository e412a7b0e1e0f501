"""Bad input gets a clear error before any work (issue: foundation, 'Bad input')."""

import logging

import pytest
import torch

from signround import AutoRound


@pytest.fixture
def tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_unknown_scheme(tiny):
    with pytest.raises(ValueError, match="unknown scheme 'W9A16'"):
        AutoRound(tiny("llama"), scheme="W9A16")


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_outside_2_to_8(tiny, bits):
    with pytest.raises(ValueError, match="takes bits 2..8"):
        AutoRound(tiny("llama"), bits=bits)


@pytest.mark.parametrize("gs", [-3, 48, 100])
def test_bad_group_size(tiny, gs):
    with pytest.raises(ValueError, match="group_size must be -1 .* power of two"):
        AutoRound(tiny("llama"), group_size=gs)


def test_missing_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path not found"):
        AutoRound(str(tmp_path / "nope" / "model"))
    with pytest.raises(FileNotFoundError, match="GGUF model file not found"):
        AutoRound(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        AutoRound(str(tmp_path / "empty"))


def test_unknown_format_fails_before_quantizing(tiny, tok, tmp_path, monkeypatch):
    ar = AutoRound(tiny("llama"), tok, iters=0, nsamples=2, seqlen=16, show_progress=False)
    monkeypatch.setattr(ar, "_calibration", lambda: pytest.fail("calibration must not start"))
    with pytest.raises(ValueError, match="unknown format 'gptq_v9'"):
        ar.quantize_and_save(tmp_path, format="auto_round,gptq_v9")


def test_scheme_the_format_cannot_hold_fails_before_calibration(tiny, tok, tmp_path, monkeypatch):
    ar = AutoRound(tiny("llama"), tok, scheme="W6A16", nsamples=2, seqlen=16, show_progress=False)
    monkeypatch.setattr(ar, "_calibration", lambda: pytest.fail("calibration must not start"))
    with pytest.raises(ValueError, match="auto_round supports bits .* got 6 at layer model.layers.0"):
        ar.quantize_and_save(tmp_path, format="auto_round")


def test_dataset_spec_that_does_not_parse(tiny):
    with pytest.raises(ValueError, match="nosuchoption"):
        AutoRound(tiny("llama"), dataset="signround:bundled:nosuchoption=3")


def test_dataset_file_missing_fails_before_the_model_loads(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibration file not found: .*calib.jsonl"):
        AutoRound(str(tmp_path / "no_model_here"), dataset=str(tmp_path / "calib.jsonl"))


def test_no_sample_long_enough(tiny, tok):
    ar = AutoRound(tiny("llama"), tok, dataset=["a short text", "another one"], nsamples=2, seqlen=64,
                   show_progress=False)
    with pytest.raises(ValueError, match="seqlen"):
        ar.quantize()


def test_layer_config_key_matching_nothing_warns(tiny, caplog):
    ar = AutoRound(tiny("llama"), layer_config={"transformer.h.0": "W8A16"}, show_progress=False)
    with caplog.at_level(logging.WARNING):
        ar.plan()
    assert "'transformer.h.0' matches no linear layer" in caplog.text


def test_unknown_keyword_is_an_error_not_a_warning(tiny):
    with pytest.raises(TypeError, match="iterz"):
        AutoRound(tiny("llama"), iterz=3)


def test_plain_rtn_needs_no_data(tiny, tmp_path):
    model = tiny("llama")
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    ar = AutoRound(model, None, iters=0, disable_opt_rtn=True, show_progress=False)
    out = ar.quantize_and_save(tmp_path, format="fake")
    assert out[0].name.endswith("-w4g128-fake")
    after = model.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(before, after) and (before - after).abs().max() < before.abs().max() / 7


def test_calibration_size_defaults_to_tuning_or_importance_matrix_needs():
    from signround.config import resolve_run
    from signround.formats import Format
    from signround.options import UserOptions

    def size(fmts=(), **given):
        run = resolve_run(UserOptions(given), fmts)
        return run.method.value, run.nsamples, run.seqlen

    assert size(iters=5) == ("signround", 128, 2048)  # AutoRound's default for tuning
    assert size(iters=0) == ("opt_rtn", 32, 512)  # only the importance matrix
    assert size(iters=0, nsamples=7, seqlen=64) == ("opt_rtn", 7, 64)
    assert size(iters=0, disable_opt_rtn=True) == ("rtn", None, None)  # no data at all
    assert size([Format.GGUF_Q4_K_M]) == ("opt_rtn", 32, 512)  # GGUF without iters: optimised RTN
    assert size([Format.GGUF_Q4_K_M], iters=10)[0] == "signround"
