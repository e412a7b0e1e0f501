"""Activation quantization of Linear inputs: calibrated maxima, the hooks, and the runs that use them."""

import copy

import pytest
import torch

from signround import AutoRound
from signround.errors import BadInputError
from signround.inference.load import load_quantized
from signround.quant.act import fake_quantize_activation
from signround.schemes import resolve_scheme
from signround.tune.act_inputs import ActMaxCollector, attach_quantized_inputs, quantized_inputs
from tests.helpers import logits


def test_collector_takes_the_max_over_real_tokens_only():
    lin = torch.nn.Linear(4, 2)
    x = torch.zeros(2, 3, 4)
    x[0, 0, 1], x[1, 2, 3] = 2.0, -9.0  # the -9 sits on a padding token
    c = ActMaxCollector()
    c.mask = torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()
    with c.watch({"l": lin}):
        lin(x)
    assert float(c.max["l"]) == 2.0
    lin(x * 10)  # the hook is gone
    assert float(c.max["l"]) == 2.0


def test_inputs_are_quantized_inside_the_context_only():
    scheme = resolve_scheme("INT8_W8A8")
    lin = torch.nn.Linear(64, 8)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        with quantized_inputs({"l": lin}, {"l": scheme}, {}):
            y = lin(x)
        assert torch.equal(y, lin(fake_quantize_activation(x, scheme)))
        assert not torch.equal(lin(x), y)


def test_static_activations_need_their_calibrated_max():
    lin = torch.nn.Linear(64, 8)
    with pytest.raises(ValueError, match="layer l has static activations .* no calibrated maximum"):
        with quantized_inputs({"l": lin}, {"l": resolve_scheme("FP8_STATIC")}, {}):
            pass


def test_static_activations_with_plain_rtn_fail_before_the_model_loads(tmp_path):
    with pytest.raises(BadInputError, match="static activations .* plain RTN"):
        AutoRound(str(tmp_path / "no_model_here"), scheme="FP8_STATIC", iters=0, disable_opt_rtn=True)


def _input_max(model, ids, names):
    """max |input| of each named Linear over a whole-model float forward."""
    c = ActMaxCollector()
    with torch.no_grad(), c.watch({n: model.get_submodule(n) for n in names}):
        model(input_ids=ids)
    return c.max


def test_int8_w8a8_quantizes_inputs_in_memory_and_after_loading(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    float_model = copy.deepcopy(model)
    ar = AutoRound(model, None, scheme="INT8_W8A8", dataset=calib_ids, nsamples=8, seqlen=32, iters=2,
                   batch_size=4, show_progress=False)
    qmodel, result = ar.quantize()
    assert result.act_max == {}  # dynamic: nothing calibrated
    out = ar.save_quantized(tmp_path, format="fake")[0]
    ref, got = logits(float_model, calib_ids), logits(qmodel, calib_ids)
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < 0.05  # 8-bit weights and inputs: close to the float model, not equal to it
    loaded = load_quantized(out)  # fake format: the input quantization comes from signround.json
    assert torch.allclose(logits(loaded, calib_ids), got, atol=1e-4, rtol=1e-4)
    bare = load_quantized(out)
    for m in bare.modules():
        m._forward_pre_hooks.clear()
    assert not torch.allclose(logits(bare, calib_ids), got, atol=1e-4, rtol=1e-4)


def test_static_fp8_calibrates_every_layers_input_max(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    float_model = copy.deepcopy(model)
    ar = AutoRound(model, None, scheme="FP8_STATIC", dataset=calib_ids, nsamples=8, seqlen=32, iters=0,
                   show_progress=False)
    qmodel, result = ar.quantize()
    names = [p.name for p in ar.plan("fake").quantized()]
    assert sorted(result.act_max) == sorted(names)
    expected = _input_max(float_model, calib_ids, names)  # the block loop's float chain is the float model
    for n in names:
        assert torch.allclose(result.act_max[n], expected[n], rtol=1e-5), n
    out = ar.save_quantized(tmp_path, format="fake")[0]
    assert torch.allclose(logits(load_quantized(out), calib_ids), logits(qmodel, calib_ids), atol=1e-4, rtol=1e-4)


def test_attach_counts_and_skips_dynamic_free_models(tiny):
    model = tiny("llama")
    assert attach_quantized_inputs(model, {}, {}) == 0
