"""AutoScheme through AutoRound on a tiny model: budget, fused groups, fixed layers, export and load-back."""

import json

import pytest
import torch

from signround import AutoRound, AutoScheme, load_quantized
from signround.autoscheme.bits import layer_bits
from signround.errors import BadInputError
from signround.request import QuantRequest
from signround.schemes import resolve_scheme
from tests.helpers import logits

FIXED = "model.layers.0.mlp.down_proj"
OPTIONS = ("W2A16G64", "W4A16")


def _run(tiny, calib_ids, tmp_path, avg_bits=3.0, **kw):
    model = tiny("llama")
    ar = AutoRound(model, scheme=AutoScheme(avg_bits=avg_bits, options=OPTIONS), iters=0, dataset=calib_ids,
                   nsamples=8, seqlen=32, show_progress=False, layer_config={FIXED: "W8A16"}, **kw)
    ar.quantize()
    out = ar.save_quantized(tmp_path, "auto_round")[0]
    return model, ar, out


def test_budget_groups_fixed_layer_and_load_back(tiny, calib_ids, tmp_path):
    model, ar, out = _run(tiny, calib_ids, tmp_path, avg_bits=3.6)
    plan = ar._plan
    record = json.loads((out / "signround.json").read_text())["settings"]["auto_scheme"]
    options = {o: resolve_scheme(o) for o in OPTIONS}
    assert plan.layers[FIXED].scheme == resolve_scheme("W8A16") and record["fixed_layers"] == [FIXED]
    chosen = {n: p for n, p in plan.layers.items() if p.quantized and n != FIXED}
    assert set(record["layers"]) == set(chosen)
    for n, p in chosen.items():
        assert p.scheme == options[record["layers"][n]]
    total = sum(p.shape[0] * p.shape[1] for p in plan.quantized())
    used = sum(layer_bits(p.scheme, p.shape) for p in plan.quantized())
    assert used <= int(total * 3.6)
    assert record["achieved_avg_bits"] == pytest.approx(used / total, abs=1e-6)
    assert 2.5 < used / total <= 3.6 and len({record["layers"][n] for n in chosen}) == 2  # a real mix
    # no single unit fits an upgrade to W4A16 (all units: q/k/v, gate/up, singles)
    for b in range(2):
        for group in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj"),
                      ("self_attn.o_proj",), ("mlp.down_proj",)):
            names = [f"model.layers.{b}.{g}" for g in group if f"model.layers.{b}.{g}" in chosen]
            assert len({record["layers"][n] for n in names}) <= 1  # a fused group shares one option
            if names and record["layers"][names[0]] == "W2A16G64":
                extra = sum(layer_bits(options["W4A16"], chosen[n].shape) - layer_bits(options["W2A16G64"],
                                                                                      chosen[n].shape) for n in names)
                assert used + extra > int(total * 3.6)
    loaded = load_quantized(out)
    assert torch.equal(logits(loaded, calib_ids), logits(model, calib_ids))


@pytest.mark.parametrize("fmt", ["auto_gptq", "llm_compressor"])
def test_other_formats_carry_the_mix(tiny, calib_ids, tmp_path, fmt):
    model = tiny("llama")
    ar = AutoRound(model, scheme=AutoScheme(avg_bits=3.6, options=OPTIONS), iters=0, dataset=calib_ids, nsamples=8,
                   seqlen=32, show_progress=False)
    ar.quantize()
    assert len({p.scheme.bits for p in ar._plan.quantized()}) == 2
    out = ar.save_quantized(tmp_path, fmt)[0]
    assert torch.equal(logits(load_quantized(out), calib_ids), logits(model, calib_ids))


def test_checks_before_the_model_loads():
    with pytest.raises(BadInputError, match="options is missing"):
        QuantRequest.build(None, {"avg_bits": 3.0})
    with pytest.raises(BadInputError, match="avg_bits is missing"):
        QuantRequest.build(None, {"options": "W2A16G64,W4A16"})
    req = QuantRequest.build(None, {"avg_bits": 3.0, "options": "W2A16G64,W4A16"})
    assert req.auto_scheme == AutoScheme(3.0, ("W2A16G64", "W4A16"))


def test_target_out_of_range_fails_before_calibration(tiny, calib_ids, tmp_path):
    ar = AutoRound(tiny("llama"), scheme=AutoScheme(avg_bits=5.0, options=OPTIONS), iters=0,
                   dataset=torch.zeros(1, 1, dtype=torch.long), show_progress=False)  # unusable data: never read
    with pytest.raises(BadInputError, match=r"W2A16G64 2\.281, W4A16 4\.156"):
        ar.quantize()
