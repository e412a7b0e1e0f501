"""The fixed-parameter rounding step, its differentiable twin (for SignRound), and what the searches buy."""

import pytest
import torch

from signround.quant.gguf import SearchMode, fake_quantize, quantize_tensor, requantize

from .gguf_testlib import KQUANTS, QUANT, test_weights


@pytest.mark.parametrize("name", KQUANTS)
@pytest.mark.parametrize("mode", list(SearchMode))
def test_kquant_rounding_step_reproduces_the_search_codes(name, mode):
    """ggml's k-quant codes *are* the final rounding pass, so round(w / s) with fixed params gives them back."""
    w = test_weights()
    q = quantize_tensor(w, name, imatrix=torch.rand(512) if mode is SearchMode.IMATRIX else None, mode=mode)
    assert torch.equal(requantize(w, q).codes, q.codes)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_legacy_rounding_step_is_close_to_the_search_codes(name):
    """ggml rounds legacy types with the float32 scale but stores its float16 rounding; the rounding
    step uses the stored scale, so codes near a rounding boundary may move by one (and only get closer)."""
    w = test_weights()
    q = quantize_tensor(w, name)
    r = requantize(w, q)
    moved = (r.codes.int() - q.codes.int()).abs()
    assert moved.max() <= 1
    assert moved.float().mean() < 0.02
    assert ((w - r.dequantize()) ** 2).sum() <= ((w - q.dequantize()) ** 2).sum()


@pytest.mark.parametrize("name", QUANT)
def test_fake_quantize_forward_equals_dequantized_codes(name):
    w = test_weights(seed=1)
    q = quantize_tensor(w, name)
    v = (torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) - 0.5) * 0.9
    expected = requantize(w, q, v).dequantize()
    assert torch.equal(fake_quantize(w, q.params, name, v), expected)
    assert torch.equal(fake_quantize(w, q.params, name), requantize(w, q).dequantize())


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K", "Q6_K"])
def test_fake_quantize_is_straight_through_in_v(name):
    w = test_weights(seed=3)
    q = quantize_tensor(w, name)
    v = torch.zeros_like(w, requires_grad=True)
    fake_quantize(w, q.params, name, v).sum().backward()
    s = q.params.group_scale().repeat_interleave(q.format.facts.group_size, dim=1).reshape(w.shape)
    inside = (q.codes.reshape(w.shape).int() > 0) & (q.codes.reshape(w.shape).int() < q.format.facts.qmax)
    # d w_hat / d v = s where the code is not clamped (straight-through rounding).
    assert torch.allclose(v.grad[inside], s[inside])
    assert v.grad.abs().sum() > 0


def test_offset_moves_codes():
    w = test_weights(seed=4)
    q = quantize_tensor(w, "q4_k")
    up = requantize(w, q, torch.full_like(w, 0.49)).codes.int()
    assert (up >= q.codes.int()).all() and (up > q.codes.int()).any()
    with pytest.raises(ValueError, match="must match"):
        requantize(w, q, torch.zeros(3, 3))


def _weighted_error(w, q, imatrix):
    return float(((w - q.dequantize()) ** 2 * imatrix[None, :]).sum())


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_imatrix_search_lowers_imatrix_weighted_error(name):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(128, 512, generator=g) * 0.02
    imatrix = torch.exp(2 * torch.randn(512, generator=g))  # heavy-tailed, like real activations
    ref = _weighted_error(w, quantize_tensor(w, name, mode="ref"), imatrix)
    weighted = _weighted_error(w, quantize_tensor(w, name, imatrix=imatrix), imatrix)
    assert weighted < ref, f"{name}: imatrix-weighted error {weighted:.4g} is not below the plain search's {ref:.4g}"


@pytest.mark.parametrize("name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_reference_search_beats_plain_rtn(name):
    w = test_weights(seed=6)
    rtn = float(((w - quantize_tensor(w, name, mode="rtn").dequantize()) ** 2).sum())
    ref = float(((w - quantize_tensor(w, name, mode="ref").dequantize()) ** 2).sum())
    assert ref < rtn
