"""The plan: per-layer resolution, skip reasons, layer_config precedence and format checks."""

import logging

import pytest
import torch

from signround.formats import Format
from signround.model.arch import arch_facts
from signround.plan import build_plan
from signround.schemes import resolve_scheme


def _plan(model, **kw):
    return build_plan(model, arch_facts(model), resolve_scheme(kw.pop("scheme", "W4A16")), **kw)


def test_default_plan_quantizes_block_linears_and_keeps_lm_head(tiny):
    plan = _plan(tiny("llama"))
    assert len(plan.quantized()) == 14  # 7 linears x 2 blocks
    assert plan.layers["lm_head"].reason.startswith("lm_head")
    assert plan.layers["model.layers.1.mlp.down_proj"].block == 1
    assert "14 of 15 linear layers quantized" in plan.table()


def test_quant_lm_head_and_tied_embeddings(tiny):
    model = tiny("llama")
    assert _plan(model, quant_lm_head=True).layers["lm_head"].quantized
    model.config.tie_word_embeddings = True
    p = _plan(model, quant_lm_head=True).layers["lm_head"]
    assert not p.quantized and "tied" in p.reason


def test_layer_config_precedence_exact_then_substring_then_regex(tiny):
    plan = _plan(
        tiny("llama"),
        layer_config={
            r"mlp\.(gate|up)_proj": {"bits": 2},  # regex
            "mlp": "W8A16",  # substring: wins over the regex
            "model.layers.0.mlp.up_proj": {"bits": 3, "group_size": 32},  # exact: wins over everything
        },
    )
    assert plan.layers["model.layers.0.mlp.up_proj"].scheme.bits == 3
    assert plan.layers["model.layers.0.mlp.up_proj"].scheme.group_size == 32
    assert plan.layers["model.layers.1.mlp.gate_proj"].scheme.bits == 8
    assert plan.layers["model.layers.1.self_attn.q_proj"].scheme.bits == 4


def test_unmatched_layer_config_key_warns_with_its_name(tiny, caplog):
    with caplog.at_level(logging.WARNING):
        _plan(tiny("llama"), layer_config={"no_such_layer": "W8A16"})
    assert "no_such_layer" in caplog.text


def test_ignore_layers_trailing_digit_does_not_match_longer_numbers(tiny):
    model = tiny("llama")
    plan = _plan(model, ignore_layers="layers.1")
    assert not plan.layers["model.layers.1.mlp.up_proj"].quantized
    assert plan.layers["model.layers.0.mlp.up_proj"].quantized
    assert plan.layers["model.layers.1.mlp.up_proj"].reason == "ignore_layers 'layers.1'"


def test_shape_rule_skips_layers_with_a_reason(tiny):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(hidden_size=96, intermediate_size=200, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64))
    plan = _plan(model)
    p = plan.layers["model.layers.0.mlp.up_proj"]
    assert not p.quantized and "200x96 is not a multiple of 32" in p.reason


def test_format_that_cannot_hold_the_scheme_fails_naming_the_layer(tiny):
    with pytest.raises(ValueError, match="auto_round supports bits .* got 5 at layer model.layers.0"):
        _plan(tiny("llama"), scheme="W5A16", formats=[Format.AUTO_ROUND])
    assert _plan(tiny("llama"), scheme="W5A16", formats=[Format.FAKE]).quantized()


def test_mixed_bits_inside_a_fused_group_fail_for_serving_formats(tiny):
    cfg = {"model.layers.0.self_attn.k_proj": {"bits": 8}}
    with pytest.raises(ValueError, match="fuse .*q_proj.*k_proj.*v_proj"):
        _plan(tiny("llama"), layer_config=cfg, formats=[Format.AUTO_ROUND])
    _plan(tiny("llama"), layer_config=cfg, formats=[Format.FAKE])  # fake does not fuse anything


def test_gpt2_conv1d_layers_are_planned_with_out_in_shapes(tiny):
    plan = _plan(tiny("gpt2"))
    p = plan.layers["transformer.h.0.attn.c_attn"]
    assert p.conv1d and p.shape == (384, 128)


def test_plan_is_serialisable(tiny):
    import json

    d = json.loads(_plan(tiny("opt")).to_json())
    assert d["layers"]["model.decoder.layers.0.fc1"]["scheme"]["bits"] == 4


def test_gptq_refuses_a_quantized_layer_outside_the_blocks_in_the_plan(tiny):
    model = tiny("llama")
    model.model.extra_proj = torch.nn.Linear(128, 128, bias=False)  # a Linear outside the decoder blocks
    cfg = {"model.extra_proj": "W4A16"}
    assert _plan(model, layer_config=cfg, formats=[Format.AUTO_ROUND]).layers["model.extra_proj"].quantized
    with pytest.raises(ValueError, match=r"format auto_gptq quantizes only layers inside the decoder blocks and the "
                                         r"lm_head; layer model.extra_proj is outside"):
        _plan(model, layer_config=cfg, formats=[Format.AUTO_GPTQ])
    assert _plan(model, quant_lm_head=True, formats=[Format.AUTO_GPTQ]).layers["lm_head"].quantized


def test_awq_group_size_rules_fail_in_the_plan_naming_the_layer(tiny):
    model = tiny("llama")
    with pytest.raises(ValueError, match=r"auto_awq needs a positive group_size, got -1 \(per-channel\) at layer "
                                         r"model.layers.0.self_attn.q_proj"):
        _plan(model, scheme="W4A16", layer_config={"model.layers.0.self_attn.q_proj": {"group_size": -1}},
              formats=[Format.AUTO_AWQ])
    with pytest.raises(ValueError, match=r"auto_awq has one group_size for the whole model, got \[64, 128\] .*"
                                         r"model.layers.0.mlp.down_proj=64"):
        _plan(model, layer_config={"mlp.down_proj": {"group_size": 64}}, formats=[Format.AUTO_AWQ])
    assert _plan(model, layer_config={"mlp.down_proj": {"group_size": 64}}, formats=[Format.AUTO_ROUND]).quantized()


def test_fused_group_members_must_agree_on_data_type_and_inputs_too(tiny):
    # same bits / group size / sym as MXFP4, another data type: a fused MXFP4 kernel cannot run it
    cfg = {"model.layers.0.self_attn.k_proj": {"data_type": "int", "bits": 4, "group_size": 32, "act_bits": 16}}
    with pytest.raises(ValueError, match="fuse .*q_proj.*k_proj.*v_proj.*same scheme"):
        _plan(tiny("llama"), scheme="MXFP4", layer_config=cfg, formats=[Format.AUTO_ROUND])
    cfg = {"model.layers.0.mlp.up_proj": {"act_bits": 16}}  # weights equal, inputs not
    with pytest.raises(ValueError, match="fuse .*gate_proj.*up_proj"):
        _plan(tiny("llama"), scheme="MXFP4", layer_config=cfg, formats=[Format.AUTO_ROUND])


@pytest.mark.parametrize("scheme, fmt, message", [
    ("MXFP4_RCEIL", Format.LLM_COMPRESSOR, "llm_compressor: compressed-tensors cannot quantize activations as mx_fp_rceil"),
    ({"scheme": "INT8_W8A8", "act_dynamic": False, "act_group_size": 0}, Format.LLM_COMPRESSOR, "static int"),
    ({"scheme": "MXINT4", "bits": 8}, Format.AUTO_ROUND, "auto_round: it stores MXINT with 4 bits only"),
    ({"scheme": "FPW8A16", "group_size": 32}, Format.AUTO_ROUND, "auto-round loads no 1 x 32 groups"),
])
def test_format_rules_beyond_the_columns_fail_in_the_plan_naming_the_layer(tiny, scheme, fmt, message):
    with pytest.raises(ValueError, match=f"{message}.*at layer model.layers.0"):
        _plan(tiny("llama"), scheme=scheme, formats=[fmt])
    _plan(tiny("llama"), scheme=scheme, formats=[Format.FAKE])  # fake holds any scheme
