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
