"""FP/MX layer states: weight() is the codes exactly, opt-RTN never loses to RTN, NVFP4 fused global scales,
and the fake export of RTN / opt-RTN / SignRound on a tiny llama holds the in-memory codes."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from signround.cli import main
from signround.export.registry import ExportInput, export_model
from signround.formats import Format
from signround.method import Start
from signround.model.arch import arch_facts
from signround.plan import LayerPlan, build_plan
from signround.quant.fp8 import to_blocks
from signround.quant.fp_types import FPQuantized
from signround.schemes import QuantScheme, resolve_scheme
from signround.tune import fp_layer
from signround.tune.driver import RuntimeOptions, quantize_model
from signround.tune.layer import RANGE_BOUNDS, V_BOUND, make_layer_state
from signround.tune.signround import SignRoundConfig

SHAPE = (160, 200)  # partial blocks everywhere: 200 = 6.25 x 32 = 12.5 x 16, 160 x 200 = 2 x 2 partial 128-blocks
SCHEMES = {
    "MXFP4": resolve_scheme("MXFP4", act_bits=16),
    "MXFP4_RCEIL_W": resolve_scheme("MXFP4", act_bits=16, data_type="mx_fp_rceil"),
    "MXFP8": resolve_scheme("MXFP8", act_bits=16),
    "MXINT4": resolve_scheme("MXINT4", act_bits=16),
    "NVFP4": resolve_scheme("NVFP4", act_bits=16),
    "FPW8A16": resolve_scheme("FPW8A16"),
    "FP8_CHANNEL": QuantScheme(bits=8, group_size=-1, data_type="fp"),
    "FP8_G64": QuantScheme(bits=8, group_size=64, data_type="fp"),
    "FP8_BLOCK": resolve_scheme("FP8_BLOCK", act_bits=16),
}


def _weight(seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * 0.05
    w[3, 7] = 1.5  # an outlier
    w[10, :64] = 0.0  # zero groups
    w[11, :32] = 1e-41  # subnormal groups
    return w


def _plan(scheme, conv1d=False, shape=SHAPE):
    return LayerPlan("model.layers.0.self_attn.q_proj", shape, scheme, "", 0, conv1d)


def _tune_randomly(state, seed=1):
    state.enable_tuning(minmax=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        state.v.copy_((torch.rand(state.v.shape, generator=g) * 2 - 1) * V_BOUND)
        lo, hi = RANGE_BOUNDS
        state.alpha.copy_(lo + torch.rand(state.alpha.shape, generator=g) * (hi - lo))


@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("conv1d", [False, True])
def test_weight_is_exactly_the_dequantized_result(name, conv1d):
    scheme = SCHEMES[name]
    w = _weight()
    state = make_layer_state(_plan(scheme, conv1d), "self_attn.q_proj", w.t() if conv1d else w,
                             imatrix=torch.rand(SHAPE[1]), optimize=True)
    for tuned in (False, True):
        if tuned:
            _tune_randomly(state)
        with torch.no_grad():
            fake = state.weight()
        res = state.result()
        assert isinstance(res, FPQuantized) and res.data_type == scheme.data_type and res.shape == SHAPE
        deq = res.dequantize()
        assert torch.equal(fake.t() if conv1d else fake, deq), (name, tuned)
        assert torch.isfinite(deq).all()
        if not tuned:  # (random tunables move the codes anywhere within their bounds)
            assert deq[10, :32].abs().max() == 0  # zero groups stay zero
            rel = float((deq - w).norm() / w.norm())
            assert rel < (0.05 if scheme.bits == 8 else 0.2), rel


@pytest.mark.parametrize("name", ["MXFP4", "NVFP4", "FP8_BLOCK", "MXINT4"])
def test_tunables_get_gradients(name):
    state = make_layer_state(_plan(SCHEMES[name]), "q", _weight(), optimize=False)
    state.enable_tuning(minmax=True)
    rounding, ranges = state.tunables()
    (state.weight() * torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))).sum().backward()
    assert rounding[0].grad is not None and rounding[0].grad.abs().sum() > 0
    assert ranges[0].grad is not None and ranges[0].grad.abs().sum() > 0
    snap = state.snapshot()
    with torch.no_grad():
        state.v.add_(5.0)
        state.alpha.mul_(9.0)
    state.clamp_()
    assert state.v.abs().max() <= V_BOUND and state.alpha.max() <= RANGE_BOUNDS[1]
    state.restore(snap)
    assert torch.equal(state.v, snap[0]) and torch.equal(state.alpha, snap[1])


def _block_errors(deq, w, imatrix, block):
    return (to_blocks(imatrix.expand_as(w), block) * to_blocks(deq - w, block) ** 2).sum(1)


@pytest.mark.parametrize("name,block", [("MXFP4", (1, 32)), ("MXFP4_RCEIL_W", (1, 32)), ("MXINT4", (1, 32)),
                                        ("MXFP8", (1, 32)), ("NVFP4", (1, 16))])
def test_opt_rtn_never_loses_to_rtn_on_any_block(name, block):
    w = _weight(3)
    imatrix = torch.rand(SHAPE[1], generator=torch.Generator().manual_seed(4)) ** 4  # uneven importance
    plan = _plan(SCHEMES[name])
    rtn = make_layer_state(plan, "q", w, imatrix, optimize=False).result().dequantize()
    opt = make_layer_state(plan, "q", w, imatrix, optimize=True).result().dequantize()
    e_rtn, e_opt = _block_errors(rtn, w, imatrix, block), _block_errors(opt, w, imatrix, block)
    assert (e_opt <= e_rtn).all()
    assert (e_opt < e_rtn).float().mean() > 0.1  # the search finds better ranges on many blocks
    assert e_opt.sum() < 0.95 * e_rtn.sum()


def test_fp8_has_no_range_search():
    w, plan = _weight(), _plan(SCHEMES["FP8_CHANNEL"])
    a = make_layer_state(plan, "q", w, torch.rand(SHAPE[1]), optimize=True).result()
    b = make_layer_state(plan, "q", w, optimize=False).result()
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)


@pytest.mark.parametrize("name", ["MXFP4", "NVFP4", "FPW8A16", "FP8_BLOCK"])
def test_slices_give_the_same_codes(name, monkeypatch):
    w, plan, imatrix = _weight(), _plan(SCHEMES[name]), torch.rand(SHAPE[1])
    whole = make_layer_state(plan, "q", w, imatrix, optimize=True)
    _tune_randomly(whole)
    want = whole.result()
    monkeypatch.setattr(fp_layer, "SEARCH_CHUNK", 100)  # every slice path, the huge per-tensor block's too
    sliced = make_layer_state(plan, "q", w, imatrix, optimize=True)
    assert torch.equal(sliced.init_range, whole.init_range)
    _tune_randomly(sliced)
    got = sliced.result()
    assert torch.equal(got.codes, want.codes) and torch.equal(got.scale, want.scale)


def test_non_finite_weights_are_refused_naming_the_layer():
    w = _weight()
    w[5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_proj: the weight holds NaN/inf"):
        make_layer_state(_plan(SCHEMES["MXFP4"]), "q", w)


def test_nvfp4_global_scale_from_the_given_tensor_amax():
    w = _weight()
    own = make_layer_state(_plan(SCHEMES["NVFP4"]), "q", w).result()
    assert own.global_scale.item() == pytest.approx(448 * 6 / 1.5)
    shared = make_layer_state(_plan(SCHEMES["NVFP4"]), "q", w, tensor_amax=torch.tensor(3.0)).result()
    assert shared.global_scale.item() == pytest.approx(448 * 6 / 3.0)
    assert float((shared.dequantize() - w).norm() / w.norm()) < 0.2


# --- the driver: NVFP4 fused global scales, and the fake export end to end -------------------------------------------

def _quantize(model, ids, scheme, iters, start):
    arch = arch_facts(model)
    plan = build_plan(model, arch, scheme, formats=[Format.FAKE])
    res = quantize_model(model, arch, plan, ids, None, SignRoundConfig(iters=iters, batch_size=4), start=start,
                         runtime=RuntimeOptions(show_progress=False))
    return plan, res


def _amax(model, name):
    return model.get_submodule(name).weight.detach().abs().max()


@pytest.mark.parametrize("iters,start", [(0, Start.MINMAX), (0, Start.SEARCH), (1, Start.SEARCH)])
def test_nvfp4_fused_layers_share_one_global_scale(tiny, calib_ids, iters, start):
    model = tiny("llama")
    float_model = copy.deepcopy(model)
    plan, res = _quantize(model, calib_ids, SCHEMES["NVFP4"], iters, start)
    for b in range(2):
        p = f"model.layers.{b}."
        for group in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")):
            amax = max(_amax(float_model, p + n) for n in group)
            scales = {n: res.weights[p + n].global_scale for n in group}
            for n, gs in scales.items():
                assert gs.item() == pytest.approx(448 * 6 / float(amax), rel=1e-6), (p + n, scales)
            assert len({float(s) for s in scales.values()}) == 1
        for lone in ("self_attn.o_proj", "mlp.down_proj"):  # not fused: each keeps its own
            gs = res.weights[p + lone].global_scale
            assert gs.item() == pytest.approx(448 * 6 / float(_amax(float_model, p + lone)), rel=1e-6)


PRESETS = ["MXFP4", "NVFP4", "MXFP8", "MXINT4", "FPW8A16", "FP8_BLOCK"]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("iters,start", [(0, Start.MINMAX), (0, Start.SEARCH), (2, Start.SEARCH)],
                         ids=["rtn", "opt_rtn", "signround"])
def test_fake_export_holds_the_in_memory_codes(tiny, calib_ids, tmp_path, preset, iters, start):
    model = tiny("llama")
    untouched = copy.deepcopy(model)
    scheme = resolve_scheme(preset, act_bits=16)
    plan, res = _quantize(model, calib_ids, scheme, iters, start)
    assert plan.quantized() and set(res.weights) == {p.name for p in plan.quantized()}
    out = export_model(ExportInput(untouched, None, plan, res.weights, source="tiny"), Format.FAKE, tmp_path / "f")
    stored = load_file(str(out / "model.safetensors"))
    for p in plan.quantized():
        qw = res.weights[p.name]
        assert isinstance(qw, FPQuantized) and qw.data_type == scheme.data_type
        want = qw.dequantize(stored[f"{p.name}.weight"].dtype)
        assert torch.equal(stored[f"{p.name}.weight"], want), p.name
        assert torch.equal(model.get_submodule(p.name).weight.detach(), want), p.name  # the model holds its codes
        assert res.layers[p.name]["weight_rel_err"] < (0.05 if scheme.bits == 8 else 0.3)
    if iters:
        for b in res.blocks.values():
            assert b["loss_after"] <= b["loss_before"]


def test_cli_fake_export_mxfp4(tiny_model_dir, tmp_path):
    for extra in (["--iters", "0"], ["--iters", "0", "--disable_opt_rtn"], ["--iters", "2"]):
        out = tmp_path / ("out" + "".join(extra))
        assert main(["--model", str(tiny_model_dir), "--scheme", "MXFP4", "--act_bits", "16", "--format", "fake",
                     "--nsamples", "4", "--seqlen", "32", "--output_dir", str(out), "-q", *extra]) == 0
        files = list(out.rglob("model.safetensors"))
        assert len(files) == 1
        w = load_file(str(files[0]))["model.layers.0.mlp.down_proj.weight"].float()
        # every 32-group of the stored weight is FP4 values times one power of two (the floor scale of its max,
        # or one exponent off after the opt-RTN search)
        g = to_blocks(w, (1, 32))
        scale = torch.exp2(torch.floor(torch.log2(g.abs().amax(1, keepdim=True).clamp(min=1e-30))) - 2)
        grid = torch.tensor([0.0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12])
        assert torch.isin((g / scale).abs(), grid).all(), extra
