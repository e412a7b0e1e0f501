"""The shared decode loop: ``decode_attention`` against float64 attention, ``greedy_decode`` against
transformers' own generate and full forwards (tiny random models; the tokens and logits must agree)."""

from __future__ import annotations

import pytest
import torch

from signround.inference.decode import (DECODE_ATTENTION, decode_attention, greedy_decode, reserved_cache,
                                        using_decode_attention)


class _Module(torch.nn.Module):  # what transformers' attention functions read from their module
    num_key_value_groups = 3
    is_causal = True
    training = False


def _reference(q, k, v, mask, scaling):
    """(B, heads, 1, D) float64 attention with key-value heads repeated, as ``repeat_kv`` does."""
    group = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    s = q.double() @ k.transpose(2, 3) * scaling
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)  # (B, 1, heads, D)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("masked", [False, True])
def test_decode_attention_matches_float64(dtype, tol, masked):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 1, 16, generator=g).to(dtype)  # 6 query heads over 2 key-value heads
    k, v = (torch.randn(2, 2, 37, 16, generator=g).to(dtype) for _ in range(2))
    mask = (torch.rand(2, 1, 1, 37, generator=g) > 0.3) if masked else None
    out, weights = decode_attention(_Module(), q, k.float(), v.float(), mask, scaling=0.25)  # a float32 cache
    ref = _reference(q, k, v, mask, 0.25)
    assert weights is None and out.shape == (2, 1, 6, 16) and out.dtype == dtype
    assert float((out.double() - ref).abs().max() / ref.abs().max()) < tol
    wrong = _reference(q, k.repeat(1, 3, 1, 1), v.repeat(1, 3, 1, 1), mask, 0.25)  # heads tiled, not interleaved
    assert float((wrong - ref).abs().max() / ref.abs().max()) > 0.1


def test_prompt_rows_go_to_sdpa_unchanged():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 6, 5, 16, generator=g).bfloat16()
    k, v = (torch.randn(1, 2, 5, 16, generator=g).bfloat16() for _ in range(2))
    ours, _ = decode_attention(_Module(), q, k.float(), v.float(), None, scaling=0.25)
    theirs, _ = sdpa_attention_forward(_Module(), q, k, v, None, scaling=0.25)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_greedy_decode_is_transformers_greedy_generate(tiny, arch):
    """Same tokens as ``generate(do_sample=False)``, and each step's logits those of a full forward of the
    sequence so far when the reserved cache is outgrown and doubled on the way."""
    model = tiny(arch)
    ids = torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    steps: list[torch.Tensor] = []
    result = greedy_decode(model, ids, 24, on_token=steps.append, eos_token_id=model.config.eos_token_id)
    with torch.inference_mode():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             pad_token_id=0)
    assert torch.equal(result.tokens, ref[:, 12:]) and torch.equal(torch.cat(steps, 1), result.tokens)
    assert model.config._attn_implementation != DECODE_ATTENTION  # restored after the loop

    assert result.tokens.shape[1] >= 16  # enough steps to outgrow the capacity below

    cache = reserved_cache(4)  # capacity 4: doubled several times
    full = torch.randint(3, 512, (1, 30), generator=torch.Generator().manual_seed(1))
    with using_decode_attention(model), torch.inference_mode():
        first = model(input_ids=full[:, :12], cache=cache, use_cache=True).logits[:, -1]
        one = [model(input_ids=full[:, t: t + 1], cache=cache, use_cache=True).logits[:, -1] for t in range(12, 30)]
    with torch.inference_mode():
        whole = model(input_ids=full).logits  # no cache, transformers' own attention
    got = torch.stack([first, *one], 1)  # (1, 19, vocab) the logits after 12..30 tokens
    assert float((got - whole[:, 11:30]).abs().max() / whole.abs().max()) < 1e-5
    assert cache.get_seq_length() == 30 and cache.layers[0].keys.shape[2] == 30


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_batched_prompts_decode_as_each_alone(tiny, arch):
    """Three prompts of 5, 9 and 12 tokens, left-padded into one batch: each row's tokens are transformers'
    greedy ``generate`` of that prompt alone, and of the padded batch; a row that hits eos is padded after it."""
    model = tiny(arch)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 512, (n,), generator=g) for n in (5, 9, 12)]
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat((torch.zeros(width - len(p), dtype=torch.long), p)) for p in prompts])
    mask = torch.stack([torch.cat((torch.zeros(width - len(p)), torch.ones(len(p)))) for p in prompts]).long()
    result = greedy_decode(model, ids, 16, attention_mask=mask)
    assert result.tokens.shape == (3, 16)
    with torch.inference_mode():
        batch_ref = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0)
        for i, p in enumerate(prompts):
            alone = model.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=16,
                                   do_sample=False, pad_token_id=0)
            assert torch.equal(result.tokens[i], alone[0, len(p):]), i
    assert torch.equal(result.tokens, batch_ref[:, width:])
    assert len({tuple(r.tolist()) for r in result.tokens}) == 3  # the rows really differ

    eos = int(result.tokens[1, 3])  # row 1's 4th token as eos: row 1 stops there (others may too, earlier or later)
    stopped = greedy_decode(model, ids, 16, attention_mask=mask, eos_token_id=eos, pad_token_id=7)
    with torch.inference_mode():
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=7,
                             eos_token_id=eos)
    got = stopped.tokens
    assert torch.equal(got, ref[:, width: width + got.shape[1]])
    k = int((result.tokens[1] == eos).nonzero()[0])  # row 1 stops at eos's first occurrence, padded after it
    assert torch.equal(got[1, : k + 1], result.tokens[1, : k + 1]) and bool((got[1, k + 1:] == 7).all())
    assert got.shape[1] > k + 1  # another row went on, so the padding was exercised

    with pytest.raises(ValueError, match="need an attention_mask"):
        greedy_decode(model, ids, 4)
    with pytest.raises(ValueError, match="left padding"):
        greedy_decode(model, ids, 4, attention_mask=mask.flip(1))


def test_bfloat16_decode_keeps_the_models_logits(tiny):
    """bf16 model: the float32 cache holds the bf16 keys exactly, so one decode step's logits are SDPA's to
    within bf16 rounding of the attention output (measured 1e-3 of max |logit| on this model)."""
    model = tiny("llama", dtype=torch.bfloat16)
    ids = torch.randint(3, 512, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = model(input_ids=ids[:, :39], use_cache=True)
        theirs = model(input_ids=ids[:, 39:], cache=out.past_key_values, use_cache=True).logits.float()
        cache = reserved_cache(64, torch.float32)
        with using_decode_attention(model):
            model(input_ids=ids[:, :39], cache=cache, use_cache=True)
            ours = model(input_ids=ids[:, 39:], cache=cache, use_cache=True).logits.float()
    assert cache.layers[0].keys.dtype == torch.float32
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-2
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_stops_at_eos_and_restores_attention_after_an_error(tiny):
    model = tiny("llama")
    ids = torch.randint(3, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    first = greedy_decode(model, ids, 5).tokens
    stopped = greedy_decode(model, ids, 5, eos_token_id=int(first[0, 1]))
    assert torch.equal(stopped.tokens, first[:, :2])
    assert torch.equal(greedy_decode(model, ids, 5, eos_token_id=[9999, int(first[0, 2])]).tokens, first[:, :3])
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        with using_decode_attention(model):
            assert model.config._attn_implementation == DECODE_ATTENTION
            raise RuntimeError("boom")
    assert model.config._attn_implementation == before
    with pytest.raises(ValueError, match=r"2 prompts need an attention_mask \(left padding"):
        greedy_decode(model, ids.repeat(2, 1), 5)
    with pytest.raises(ValueError, match=r"prompts of shape \(B, T\) with T >= 1, got \(6,\)"):
        greedy_decode(model, ids[0], 5)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1, got 0"):
        greedy_decode(model, ids, 0)
