"""Re-linearization: the sensitivity pass with a plan's RTN weights in place is the quantized model's exact backward."""

import copy

import pytest
import torch

from signround.autoscheme.config import AutoScheme
from signround.autoscheme.sensitivity import layer_gradients, rtn_weight
from signround.errors import BadInputError
from signround.model.arch import arch_facts
from signround.plan import build_plan
from signround.schemes import resolve_scheme

from .peaked import peaked_tiny


def test_pass_with_plan_in_place_equals_quantized_model_backward(tiny, calib_ids):
    model = tiny("llama")
    arch = arch_facts(model)
    layers = {p.name: p for p in build_plan(model, arch, resolve_scheme("W4A16"), quant_lm_head=True).quantized()}
    w2 = resolve_scheme("W2A16G64")
    current = {n: w2 for i, n in enumerate(layers) if i % 2 == 0 or n == "lm_head"}  # half the blocks' layers + head
    grads, weights, outer = {}, {}, {}

    class Probe:
        def start(self, p, w):
            weights[p.name] = w.clone()
            outer[p.name] = torch.zeros(p.shape)

        def tokens(self, p, x, g):
            outer[p.name] += g.t() @ x

        def finish(self, p, g, w):
            grads[p.name] = g.clone()

    loss = layer_gradients(model, arch, layers, calib_ids, None, Probe(), batch_size=3, current=current)
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        for n, s in current.items():
            m = ref_model.get_submodule(n)
            m.weight.copy_(rtn_weight(layers[n], s, m.weight))
    ref = ref_model(input_ids=calib_ids, labels=calib_ids).loss
    ref.backward()
    with torch.no_grad():
        float_loss = float(model(input_ids=calib_ids, labels=calib_ids).loss)
    assert loss == pytest.approx(float(ref), rel=1e-5)
    assert abs(loss - float_loss) > 1e-3  # the 2-bit layers did change the loss: the pass ran the quantized model
    for name in layers:  # gradients and taps are the quantized model's; the probe still gets the float weight
        torch.testing.assert_close(grads[name], ref_model.get_submodule(name).weight.grad, rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(outer[name], ref_model.get_submodule(name).weight.grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(weights[name], model.get_submodule(name).weight.float())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_rounds_checked_on_construction(bad):
    with pytest.raises(BadInputError, match="rounds"):
        AutoScheme(avg_bits=3, options=("W2A16G64", "W4A16"), rounds=bad)


@pytest.mark.parametrize("seed", [0, 1])
def test_mix_beats_uniform_w3_and_rounds_do_not_hurt(tiny, seed):
    """At W3A16's size (3.15 bpw), the {W2A16G64, W4A16} plan's exact KL (RTN, calibration tokens) is below uniform
    W3A16's (measured seeds 0-3: 0.466-0.492 vs 0.540-0.592); a second, re-linearized round keeps or lowers it (on
    2 blocks it changed no choice; on SmolLM2's 30 it does, see benchmarks/RESULTS.md)."""
    from signround.autoscheme.allocate import check_budget, choose
    from signround.autoscheme.bits import effective_scheme, layer_bits
    from signround.autoscheme.sensitivity import sensitivity
    from signround.autoscheme.units import build_units

    model, ids = peaked_tiny(tiny, seed)
    arch = arch_facts(model)
    plan = build_plan(model, arch, resolve_scheme("W4A16"))
    layers = {p.name: p for p in plan.quantized()}
    shapes = {n: p.shape for n, p in layers.items()}
    opts = {n: resolve_scheme(n) for n in ("W2A16G64", "W4A16")}
    w3 = resolve_scheme("W3A16")
    target = sum(layer_bits(w3, s) for s in shapes.values()) / sum(o * i for o, i in shapes.values())
    budget = check_budget(target, opts, shapes, {})
    units = build_units(list(layers), plan.blocks_prefix, arch.fused_groups, ())
    w0 = {n: model.get_submodule(n).weight.detach().clone() for n in layers}
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float().log_softmax(-1)[:, :-1]

    def kl(cfg):
        with torch.no_grad():
            for n, s in cfg.items():
                model.get_submodule(n).weight.copy_(rtn_weight(layers[n], s, w0[n]))
            lp = model(input_ids=ids).logits.float().log_softmax(-1)[:, :-1]
            for n in cfg:
                model.get_submodule(n).weight.copy_(w0[n])
        return float((ref.exp() * (ref - lp)).sum(-1).mean())

    current, kls = None, []
    for _ in range(2):
        scores = sensitivity(model, arch, layers, opts, ids, None, batch_size=4, current=current)
        choice = choose(units, shapes, opts, scores, budget)
        assert choice.bits <= budget.bits
        current = {n: effective_scheme(opts[o], shapes[n]) for n, o in choice.option.items()}
        kls.append(kl(current))
    uniform = kl({n: w3 for n in layers})
    assert 0.3 < uniform < 1.0
    assert kls[0] < 0.92 * uniform
    assert kls[1] <= kls[0] * (1 + 1e-6)
