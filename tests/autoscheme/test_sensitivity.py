"""The one-pass sensitivity: exact gradients from the streamed backward, and a ranking that follows the true loss."""

import pytest
import torch

from signround.autoscheme.sensitivity import estimate, layer_gradients, rtn_weight, sensitivity, sensitivity_terms
from signround.model.arch import arch_facts
from signround.plan import build_plan
from signround.schemes import resolve_scheme

from .peaked import peaked_tiny


def _layers(model, **kw):
    plan = build_plan(model, arch_facts(model), resolve_scheme("W4A16"), **kw)
    return {p.name: p for p in plan.quantized()}


def test_streamed_backward_equals_full_model_backward(tiny, calib_ids):
    model = tiny("llama")
    arch = arch_facts(model)
    mask = torch.ones_like(calib_ids)
    mask[0, 20:] = 0  # right padding: excluded from the loss
    mask[3, 9:] = 0
    layers = _layers(model, quant_lm_head=True)
    grads, outer = {}, {}

    class Probe:
        def start(self, p, w):
            outer[p.name] = torch.zeros(p.shape if not p.conv1d else p.shape[::-1])

        def tokens(self, p, x, g):
            outer[p.name] += g.t() @ x  # sum_t g_t x_t^T is dL/dW: the taps see the exact input and output gradient

        def finish(self, p, g, w):
            grads[p.name] = g.clone()

    loss = layer_gradients(model, arch, layers, calib_ids, mask, Probe(), batch_size=3)
    assert all(p.grad is None for p in model.parameters())  # the pass leaves no state on the modules
    labels = calib_ids.masked_fill(mask == 0, -100)
    ref = model(input_ids=calib_ids, labels=labels).loss
    ref.backward()
    assert loss == pytest.approx(float(ref), rel=1e-5)
    assert set(grads) == set(layers) and "lm_head" in grads
    for name in layers:
        g = model.get_submodule(name).weight.grad
        assert g.abs().max() > 0
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(outer[name], g, rtol=1e-4, atol=1e-7)


def _spearman(a, b):
    ra, rb = (torch.tensor(x).argsort().argsort().double() for x in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.mark.parametrize("seed", [0, 1])
def test_ranking_follows_the_exact_loss_increase(tiny, seed):
    """A random tiny model at its initial scale predicts near-uniformly, so quantizing any layer changes its loss by
    noise. Its Linear weights are scaled x6 (peaked predictions) and the calibration rows are sampled from the model
    itself, so the loss is meaningful. Measured over seeds 0-3, Spearman vs the exact single-layer loss increase over
    all (layer, option) pairs / among layers under W2A16G64: the estimate (empirical Fisher) 0.94-0.958 /
    0.895-0.943, AutoRound's sum |G * dW| 0.91-0.95 / 0.76-0.87 (adding the signed first-order term ranks this same
    sample better, 0.97-0.995, but it does not carry to other text; see ``estimate``). Against the exact KL from the
    float model on the same tokens (the benchmark's measure): the estimate 0.993-0.997 / 0.952-0.982, sum |G * dW|
    0.974-0.976 / 0.868-0.925, first order + Fisher 0.908-0.966; the estimate's sum over W2A16G64 layers is 1.15-1.32x
    the exact KLs' sum."""
    model, ids = peaked_tiny(tiny, seed)
    arch = arch_facts(model)
    layers = _layers(model)
    options = {n: resolve_scheme(n) for n in ("W2A16G64", "W3A16", "W8A16")}
    terms, n = sensitivity_terms(model, arch, layers, options, ids, None, batch_size=4)
    assert n == 8 * 31
    est, first_order, exact, kl = [], [], [], []
    with torch.no_grad():
        base = float(model(input_ids=ids, labels=ids).loss)
        ref = model(input_ids=ids).logits.float().log_softmax(-1)[:, :-1]
        for name, plan in layers.items():
            module = model.get_submodule(name)
            w0 = module.weight.detach().clone()
            for o, s in options.items():
                module.weight.copy_(rtn_weight(plan, s, w0))
                out = model(input_ids=ids, labels=ids)
                exact.append(float(out.loss) - base)
                lp = out.logits.float().log_softmax(-1)[:, :-1]
                kl.append(float((ref.exp() * (ref - lp)).sum(-1).mean()))
                module.weight.copy_(w0)
                est.append(estimate(terms[name][o], n))
                first_order.append(terms[name][o].abs_grad)
    assert _spearman(est, exact) > 0.92
    assert _spearman(est[0::3], exact[0::3]) > 0.88
    assert _spearman(est, exact) > _spearman(first_order, exact) + 0.01
    assert _spearman(est[0::3], exact[0::3]) > _spearman(first_order[0::3], exact[0::3]) + 0.04
    assert all(e > 0 for e in est)
    assert _spearman(est, kl) > 0.98 and _spearman(est, kl) > _spearman(first_order, kl) + 0.01
    assert _spearman(est[0::3], kl[0::3]) > 0.93
    assert _spearman(est[0::3], kl[0::3]) > _spearman(first_order[0::3], kl[0::3]) + 0.02
    assert 1.0 < sum(est[0::3]) / sum(kl[0::3]) < 1.5
    assert all(terms[l]["W2A16G64"].fisher > 100 * terms[l]["W8A16"].fisher for l in layers)
    assert sum(est[0::3]) > 100 * sum(est[2::3])


def test_float_option_scores_zero(tiny, calib_ids):
    model = tiny("llama")
    layers = _layers(model)
    options = {"BF16": resolve_scheme("BF16"), "W4A16": resolve_scheme("W4A16")}
    scores = sensitivity(model, arch_facts(model), layers, options, calib_ids, None)
    terms, n = sensitivity_terms(model, arch_facts(model), layers, options, calib_ids, None)
    assert set(scores) == set(layers) and all(set(t) == {"W4A16"} for t in terms.values())
    for name, s in scores.items():
        assert s["BF16"] == 0.0 and terms[name]["W4A16"].fisher > 0
        assert s["W4A16"] == pytest.approx(estimate(terms[name]["W4A16"], n), rel=1e-9)
