"""GGUF through the whole pipeline on tiny models: schemes, formats, plan, layer state, API, CLI, bad input.

The file contents are checked with our own reader (bit-exact against the in-memory codes); llama.cpp
itself is in ``test_pipeline_llama_cpp.py``.
"""

import logging

import numpy as np
import pytest
import torch

from signround import AutoRound
from signround.cli import main as cli_main
from signround.export.gguf import load_gguf_state_dict, read_gguf_tensors
from signround.export.registry import ExportInput, export_model
from signround.formats import Format, parse_formats
from signround.method import Start
from signround.model.arch import arch_facts
from signround.plan import build_plan
from signround.quant.gguf import GGMLType, SearchMode, quantize_tensor, search_mode
from signround.schemes import GGUF_PRESETS, PRESETS, QuantScheme, gguf_scheme, resolve_scheme
from signround.testing import tiny_model
from signround.tune.gguf_layer import make_gguf_state

from .gguf_testlib import tiny_arch_model, tiny_tokenizer

CALIB = dict(nsamples=4, seqlen=32, batch_size=2, show_progress=False)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _one_gguf(folder):
    files = list(folder.glob("*.gguf"))
    assert len(files) == 1, files
    return files[0]


def _assert_file_holds_codes(ar, path):
    """Every planned layer's weight decoded from the file equals the in-memory dequantized codes, bit for bit."""
    state = load_gguf_state_dict(path, ar.model)
    for name, qw in ar.result.weights.items():
        assert torch.equal(state[f"{name}.weight"], qw.dequantize()), name
        assert torch.equal(ar.model.get_submodule(name).weight, qw.dequantize()), name
    stored = read_gguf_tensors(path)
    assert stored["blk.0.attn_q.weight"][0] is GGMLType[ar._plan.layers["model.layers.0.self_attn.q_proj"].scheme.ggml_type]


# -- schemes and formats -----------------------------------------------------------------------

def test_gguf_presets_are_validated_schemes_of_their_mix_default_type():
    assert set(GGUF_PRESETS) >= {"GGUF:Q4_K_M", "GGUF:Q2_K_S", "GGUF:Q3_K_S", "GGUF:Q4_0", "GGUF:Q8_0", "GGUF:Q6_K"}
    s = PRESETS["GGUF:Q4_K_M"]
    assert (s.data_type, s.ggml_type, s.bits, s.group_size, s.sym) == ("gguf", "Q4_K", 4, 32, False)
    assert PRESETS["GGUF:Q3_K_S"] == gguf_scheme("q3_k") and gguf_scheme("Q3_K").sym
    assert resolve_scheme("q8_0") == gguf_scheme("Q8_0")  # a bare ggml type (for layer_config)
    with pytest.raises(ValueError, match="GGUF type Q4_K is bits 4, group_size 32, asym"):
        QuantScheme(bits=3, group_size=32, sym=False, data_type="gguf", ggml_type="Q4_K")
    with pytest.raises(ValueError, match="only meaningful with data_type 'gguf'"):
        QuantScheme(ggml_type="Q4_K")


def test_unknown_gguf_type_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown GGUF type 'gguf:q7_k'; valid: gguf:q4_0, .*gguf:q4_k_m"):
        parse_formats("gguf:q7_k")
    with pytest.raises(ValueError, match=r"unknown GGUF scheme 'GGUF:Q7_K'; valid: GGUF:Q4_0, .*GGUF:Q4_K_M"):
        resolve_scheme("GGUF:Q7_K")
    with pytest.raises(ValueError, match=r"unknown GGUF type 'q7_k'; valid: Q4_0, .*Q6_K"):
        gguf_scheme("q7_k")


def test_gguf_format_cannot_be_combined_with_other_formats():
    assert parse_formats("gguf:q4_k_m") == [Format.GGUF_Q4_K_M]
    with pytest.raises(ValueError, match="gguf:q4_k_m cannot be combined with auto_round"):
        parse_formats("gguf:q4_k_m,auto_round")
    with pytest.raises(ValueError, match="gguf:q2_k_s cannot be combined with gguf:q4_k_m"):
        parse_formats("gguf:q2_k_s, gguf:q4_k_m")


def test_scheme_overrides_on_a_gguf_preset_warn_that_they_are_ignored(caplog):
    with caplog.at_level(logging.WARNING):
        s = resolve_scheme("GGUF:Q4_K_M", bits=2, group_size=64, sym=True)
    assert s == PRESETS["GGUF:Q4_K_M"]
    assert "override(s) bits=2, group_size=64, sym=True are ignored" in caplog.text


# -- the plan ------------------------------------------------------------------------------------

def test_plan_takes_each_type_and_reason_from_the_llama_cpp_mix():
    model = tiny_arch_model("llama")
    plan = build_plan(model, arch_facts(model), PRESETS["GGUF:Q4_K_M"], formats=[Format.GGUF_Q4_K_M])
    v1 = plan.layers["model.layers.1.self_attn.v_proj"]
    assert v1.scheme.ggml_type == "Q6_K" and "attn_v in more-bits layer 1/2" in v1.reason
    assert plan.layers["model.layers.0.self_attn.v_proj"].scheme.ggml_type == "Q4_K"
    head = plan.layers["lm_head"]  # not tied: llama.cpp's output.weight, quantized without quant_lm_head
    assert head.quantized and head.scheme.ggml_type == "Q6_K" and head.reason == "output in Q6_K"
    assert "token_embd.weight" in plan.extra and "Q4_K" in plan.extra["token_embd.weight"]
    table = plan.table()
    assert "q6_k" in table and "token_embd.weight  (written by the format)" in table


def test_plan_states_shape_fallbacks_and_tied_embeddings():
    model = tiny_model("llama")  # hidden 128: no k-quant fits a 128-wide row
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    plan = build_plan(model, arch_facts(model), PRESETS["GGUF:Q2_K_S"], formats=[Format.GGUF_Q2_K_S])
    q = plan.layers["model.layers.0.self_attn.q_proj"]
    assert q.scheme.ggml_type == "Q4_0" and "row size 128 not a multiple of Q2_K block 256 -> Q4_0" in q.reason
    assert not plan.layers["lm_head"].quantized and "tied" in plan.layers["lm_head"].reason
    assert "Q8_0" in plan.extra["token_embd.weight"]


def test_layer_config_may_name_a_ggml_type_and_int_schemes_are_refused():
    model = tiny_arch_model("llama")
    plan = build_plan(model, arch_facts(model), PRESETS["GGUF:Q4_K_M"], formats=[Format.GGUF_Q4_K_M],
                      layer_config={"mlp.up_proj": "Q8_0"}, ignore_layers="layers.0.mlp.gate_proj")
    assert plan.layers["model.layers.1.mlp.up_proj"].scheme.ggml_type == "Q8_0"
    assert not plan.layers["model.layers.0.mlp.gate_proj"].quantized
    with pytest.raises(ValueError, match="format gguf:q4_k_m stores data types \\['gguf'\\], got int .* at layer"):
        build_plan(model, arch_facts(model), PRESETS["GGUF:Q4_K_M"], formats=[Format.GGUF_Q4_K_M],
                   layer_config={"mlp.up_proj": "W4A16"})


# -- the layer state ---------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_layer_state_fake_quant_is_what_the_codes_dequantize_to(qtype):
    from signround.plan import LayerPlan

    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 512, generator=g) * 0.02
    plan = LayerPlan("l", (8, 512), gguf_scheme(qtype), "test", 0)
    state = make_gguf_state(plan, "l", w, torch.rand(512, generator=g) + 0.1)
    assert torch.equal(state.result().codes, state.init.codes)  # untuned: the search's own codes
    state.enable_tuning(minmax=True)
    with torch.no_grad():
        state.v.uniform_(-0.5, 0.5, generator=g)
    state.clamp_()
    w_hat = state.weight()
    w_hat.sum().backward()  # differentiable in v
    assert state.v.grad is not None and state.tunables()[1] == []
    assert torch.equal(w_hat.detach(), state.result().dequantize())
    assert (state.result().codes != state.init.codes).any()


# -- API and CLI ---------------------------------------------------------------------------------

def test_api_gguf_preset_defaults_to_its_format_and_to_opt_rtn(tmp_path, tok):
    ar = AutoRound(tiny_arch_model("llama"), tok, scheme="GGUF:Q4_K_M", **CALIB)
    (folder,) = ar.quantize_and_save(tmp_path)
    assert folder.name == "model-gguf-q4_k_m" and ar.run.tuning.iters == 0 and ar.run.method.value == "opt_rtn"
    assert sorted(p.name for p in folder.iterdir()) == ["model-Q4_K_M.gguf", "quant_log.json", "signround.json"]
    assert "model.layers.0.mlp.down_proj" in ar.result.imatrix and "lm_head" in ar.result.imatrix
    _assert_file_holds_codes(ar, _one_gguf(folder))
    with pytest.raises(ValueError, match=r"can only be exported as GGUF \(gguf:q4_k_m\); got format auto_round"):
        ar.save_quantized(tmp_path, format="auto_round")


def test_a_run_quantized_for_a_gguf_mix_is_not_saved_in_another_format(tmp_path, tok):
    ar = AutoRound(tiny_arch_model("llama"), tok, **CALIB)
    ar.quantize_and_save(tmp_path, format="gguf:q4_k_m")
    with pytest.raises(ValueError, match="quantized for gguf:q4_k_m; .* cannot be saved as auto_round"):
        ar.save_quantized(tmp_path, format="auto_round")


def test_api_tuned_q2_k_s_writes_the_tuned_codes(tmp_path, tok):
    ar = AutoRound(tiny_arch_model("llama"), tok, iters=8, **CALIB)
    (folder,) = ar.quantize_and_save(tmp_path, format="gguf:q2_k_s")
    blocks = ar.result.blocks
    assert all(b["iters_run"] == 8 and b["loss_after"] <= b["loss_before"] for b in blocks.values())
    _assert_file_holds_codes(ar, _one_gguf(folder))


def test_disable_opt_rtn_is_plain_rtn_without_data(tmp_path, tok, monkeypatch):
    model = tiny_arch_model("llama")
    w = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    ar = AutoRound(model, tok, iters=0, disable_opt_rtn=True, **CALIB)
    import signround.calib

    monkeypatch.setattr(signround.calib, "get_calibration_data",
                        lambda *a, **k: pytest.fail("plain RTN needs no calibration data"))
    (folder,) = ar.quantize_and_save(tmp_path, format="gguf:q4_0")
    expected = quantize_tensor(w, "Q4_0", mode="rtn").to_bytes().numpy()
    stored = read_gguf_tensors(_one_gguf(folder))["blk.0.ffn_down.weight"][2]
    assert np.array_equal(np.asarray(stored).view(np.uint8).reshape(expected.shape), expected)


def test_gguf_bad_input_fails_before_calibration(tmp_path, tok, monkeypatch, caplog):
    def no_calibration():
        pytest.fail("calibration must not start")

    ar = AutoRound(tiny_model("gpt2"), tok, iters=0, **CALIB)
    monkeypatch.setattr(ar, "_calibration", no_calibration)
    with pytest.raises(ValueError, match="the GGUF writer does not know architecture 'gpt2'; known: llama"):
        ar.quantize_and_save(tmp_path, format="gguf:q4_k_m")
    ar = AutoRound(tiny_arch_model("llama"), tok, scheme="GGUF:Q4_K_M", **CALIB)
    monkeypatch.setattr(ar, "_calibration", no_calibration)
    with pytest.raises(ValueError, match="scheme GGUF:Q4_K_M and format gguf:q2_k_s name different mixes"):
        ar.quantize_and_save(tmp_path, format="gguf:q2_k_s")
    with pytest.raises(ValueError, match=r"a GGUF scheme \(q4_k\) can only be exported as GGUF \(gguf:q4_k_m\)"):
        ar.quantize_and_save(tmp_path, format="auto_round")
    ar = AutoRound(tiny_arch_model("llama"), tok, bits=3, group_size=32, **CALIB)
    monkeypatch.setattr(ar, "_calibration", no_calibration)
    with caplog.at_level(logging.WARNING):
        plan = ar.plan("gguf:q4_k_m")
    assert "override(s) bits=3, group_size=32 are ignored" in caplog.text
    assert plan.layers["model.layers.0.self_attn.q_proj"].scheme.ggml_type == "Q4_K"
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_arch_model("llama").save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cli_gguf_format_print_plan_and_export(tmp_path, tiny_dir, capsys):
    assert cli_main(["--model", str(tiny_dir), "--format", "gguf:q4_k_m", "--print_plan", "-q"]) == 0
    out = capsys.readouterr().out
    assert "attn_v in more-bits layer 1/2" in out and "output in Q6_K" in out and "token_embd.weight" in out
    args = ["--model", str(tiny_dir), "--scheme", "GGUF:Q4_K_M", "--format", "gguf:q4_k_m", "--nsamples", "4",
            "--seqlen", "32", "--output_dir", str(tmp_path), "-q"]
    assert cli_main(args) == 0
    folder = tmp_path / f"{tiny_dir.name}-gguf-q4_k_m"
    path = _one_gguf(folder)
    assert path.name == f"{tiny_dir.name}-Q4_K_M.gguf"
    import json

    assert json.loads((folder / "signround.json").read_text())["settings"]["iters"] == 0  # opt-RTN by default


def test_cli_bad_gguf_type_exits_2_listing_the_valid_ones(tmp_path, tiny_dir, capsys):
    assert cli_main(["--model", str(tiny_dir), "--format", "gguf:q9_k", "--output_dir", str(tmp_path), "-q"]) == 2
    assert "unknown GGUF type 'gguf:q9_k'; valid: gguf:q4_0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_tied_token_embd_is_quantized_with_the_lm_head_importance(tmp_path, tok):
    model = tiny_arch_model("qwen2")  # tied embeddings, hidden 256: token_embd in Q6_K
    emb = model.get_input_embeddings().weight.detach().clone()
    ar = AutoRound(model, tok, iters=0, **CALIB)
    (folder,) = ar.quantize_and_save(tmp_path, format="gguf:q4_k_m")
    assert "token_embd.weight" in ar._plan.extra and not ar._plan.layers["lm_head"].quantized
    expected = quantize_tensor(emb, "Q6_K", imatrix=ar.result.imatrix["lm_head"]).to_bytes().numpy()
    qtype, _, data = read_gguf_tensors(_one_gguf(folder))["token_embd.weight"]
    assert qtype is GGMLType.Q6_K
    assert np.array_equal(np.asarray(data).view(np.uint8).reshape(expected.shape), expected)


@pytest.mark.parametrize("start, mode", [(Start.MINMAX, "rtn"), (Start.SEARCH, "ref")])
def test_the_writer_quantizes_its_own_tensors_as_export_input_start_says(start, mode, tmp_path, tok):
    """token_embd is no planned Linear: the GGUF writer quantizes it, with the search ``ExportInput.start`` picks."""
    model = tiny_arch_model("llama")
    plan = build_plan(model, arch_facts(model), gguf_scheme("q4_0"), formats=[Format.GGUF_Q4_0])
    weights = {p.name: quantize_tensor(model.get_submodule(p.name).weight.detach(), p.scheme.ggml_type, mode=mode)
               for p in plan.quantized()}
    folder = export_model(ExportInput(model, tok, plan, weights, source="tiny", start=start), Format.GGUF_Q4_0,
                          tmp_path / "g")
    stored = read_gguf_tensors(_one_gguf(folder))["token_embd.weight"]
    emb = model.get_input_embeddings().weight.detach()
    expected = quantize_tensor(emb, "Q4_0", mode=mode).to_bytes().numpy()
    assert stored[0] is GGMLType.Q4_0
    assert np.array_equal(np.asarray(stored[2]).view(np.uint8).reshape(expected.shape), expected)
    assert search_mode(start, has_imatrix=True) is (SearchMode.RTN if start is Start.MINMAX else SearchMode.IMATRIX)
