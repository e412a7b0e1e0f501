"""The per-tensor type plan of each named mix, as llama.cpp's ``llama_tensor_get_type`` makes it."""

import pytest

from signround.formats.gguf_mixes import MIXES, format_plan, mix_spec, plan_tensor_types
from signround.quant.gguf import GGMLType as T


def _tensors(n_layer=8, hidden=1024, ff=2048, kv=256, tied=False):
    out = [("token_embd.weight", (32000, hidden)), ("output_norm.weight", (hidden,))]
    if not tied:
        out.append(("output.weight", (32000, hidden)))
    for i in range(n_layer):
        out += [
            (f"blk.{i}.attn_norm.weight", (hidden,)),
            (f"blk.{i}.attn_q.weight", (hidden, hidden)),
            (f"blk.{i}.attn_k.weight", (kv, hidden)),
            (f"blk.{i}.attn_v.weight", (kv, hidden)),
            (f"blk.{i}.attn_output.weight", (hidden, hidden)),
            (f"blk.{i}.ffn_gate.weight", (ff, hidden)),
            (f"blk.{i}.ffn_up.weight", (ff, hidden)),
            (f"blk.{i}.ffn_down.weight", (hidden, ff)),
        ]
    return out


def _types(plan, suffix):
    return [plan[n].qtype for n in plan if n.endswith(suffix)]


def test_unknown_mix_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown GGUF mix 'q4_k_x'; valid: q4_0, q4_1"):
        mix_spec("q4_k_x")
    assert mix_spec("GGUF:Q4_K_M").default is T.Q4_K


def test_q4_k_m_more_bits_layers():
    plan = plan_tensor_types(_tensors(n_layer=16), "q4_k_m", n_layer=16, n_gqa=4)
    # use_more_bits(i, 16): i < 2, i >= 14, or (i - 2) % 3 == 2 -> 0, 1, 4, 7, 10, 13, 14, 15
    more = {0, 1, 4, 7, 10, 13, 14, 15}
    assert _types(plan, "attn_v.weight") == [T.Q6_K if i in more else T.Q4_K for i in range(16)]
    assert _types(plan, "ffn_down.weight") == [T.Q6_K if i in more else T.Q4_K for i in range(16)]
    assert set(_types(plan, "attn_q.weight")) == {T.Q4_K}
    assert plan["output.weight"].qtype is T.Q6_K
    assert plan["token_embd.weight"].qtype is T.Q4_K
    assert plan["output_norm.weight"].qtype is T.F32


def test_tied_embeddings_take_the_output_type():
    plan = plan_tensor_types(_tensors(tied=True), "q4_k_m", n_layer=8)
    assert plan["token_embd.weight"].qtype is T.Q6_K
    plan = plan_tensor_types(_tensors(tied=True, hidden=576, kv=192, ff=1536), "q4_k_m", n_layer=8)
    assert plan["token_embd.weight"].qtype is T.Q8_0  # 576 is not a multiple of 256
    assert plan_tensor_types(_tensors(), "q8_0", n_layer=8)["output.weight"].qtype is T.Q8_0


def test_shape_fallbacks():
    plan = plan_tensor_types(_tensors(hidden=576, kv=192, ff=1536), "q4_k_m", n_layer=8)
    assert plan["blk.2.attn_q.weight"].qtype is T.Q5_0  # Q4_K -> Q5_0
    assert plan["blk.0.attn_v.weight"].qtype is T.Q8_0  # Q6_K -> Q8_0
    assert plan["blk.2.ffn_down.weight"].qtype is T.Q4_K  # 1536 = 6 x 256 fits
    assert "row size 576 not a multiple of Q4_K block 256 -> Q5_0" in plan["blk.2.attn_q.weight"].reason
    low = plan_tensor_types(_tensors(hidden=576, kv=192, ff=1536), "q3_k_s", n_layer=8)
    assert low["blk.2.attn_q.weight"].qtype is T.Q4_0  # Q3_K -> Q4_0
    assert plan_tensor_types(_tensors(hidden=576), "q5_k_s", n_layer=8)["blk.2.attn_q.weight"].qtype is T.Q5_1
    odd = plan_tensor_types([("blk.0.attn_q.weight", (64, 100))], "q4_k_m", n_layer=1)
    assert odd["blk.0.attn_q.weight"].qtype is T.F16  # 100 fits no block


def test_low_bit_mix_upgrades():
    q3m = plan_tensor_types(_tensors(n_layer=32), "q3_k_m", n_layer=32)
    assert _types(q3m, "attn_v.weight")[:3] == [T.Q5_K, T.Q5_K, T.Q4_K]
    assert _types(q3m, "ffn_down.weight")[:3] == [T.Q5_K, T.Q5_K, T.Q4_K]
    assert set(_types(q3m, "attn_output.weight")) == {T.Q4_K}
    q3l = plan_tensor_types(_tensors(), "q3_k_l", n_layer=8)
    assert set(_types(q3l, "attn_v.weight")) == set(_types(q3l, "ffn_down.weight")) == {T.Q5_K}
    q2s = plan_tensor_types(_tensors(n_layer=16), "q2_k_s", n_layer=16, n_gqa=4)
    assert set(_types(q2s, "attn_v.weight")) == {T.Q4_K}
    assert _types(q2s, "ffn_down.weight")[:3] == [T.Q4_K, T.Q4_K, T.Q2_K]
    q2s_mha = plan_tensor_types(_tensors(), "q2_k_s", n_layer=8, n_gqa=1)
    assert set(_types(q2s_mha, "attn_v.weight")) == {T.Q2_K}
    q4s = plan_tensor_types(_tensors(), "q4_k_s", n_layer=8)
    assert _types(q4s, "attn_v.weight")[3:5] == [T.Q5_K, T.Q4_K]
    assert _types(q4s, "ffn_down.weight")[:2] == [T.Q5_K, T.Q4_K]
    imat = plan_tensor_types(_tensors(n_layer=16), "q4_0", n_layer=16, has_imatrix=True)
    assert _types(imat, "ffn_down.weight")[:3] == [T.Q4_1, T.Q4_1, T.Q4_0]


def test_expert_models_bump_attention():
    plan = plan_tensor_types(_tensors(), "q4_k_m", n_layer=8, n_expert=8)
    assert set(_types(plan, "attn_v.weight")) == set(_types(plan, "attn_k.weight")) == {T.Q8_0}
    assert set(_types(plan, "attn_output.weight")) == {T.Q5_K}


@pytest.mark.parametrize("mix", ["f16", "bf16", "f32"])
def test_float_mixes(mix):
    plan = plan_tensor_types(_tensors(), mix, n_layer=8)
    assert {plan[n].qtype for n in plan if not n.endswith("norm.weight")} == {MIXES[mix].default}


def test_plan_prints():
    text = format_plan(plan_tensor_types(_tensors(n_layer=2), "q4_k_m", n_layer=2))
    assert "blk.1.attn_v.weight" in text and "attn_v in more-bits layer 1/2" in text
    assert text.splitlines()[-1] == "types: F32 x3, Q4_K x13, Q6_K x3"
