"""Captured block inputs reproduce the model's own forward, block by block, for every architecture."""

import pytest
import torch

from signround.model.arch import arch_facts, get_module
from signround.model.capture import capture_block_args, capture_first_block_inputs, run_block
from signround.testing import TINY_CONFIGS


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_chained_blocks_match_the_model_hidden_states(arch, tiny, calib_ids):
    model = tiny(arch)
    facts = arch_facts(model)
    blocks = get_module(model, facts.blocks)
    with torch.no_grad():
        expected = model(input_ids=calib_ids, output_hidden_states=True).hidden_states
        args = capture_block_args(model, blocks, calib_ids[:1])
        h = capture_first_block_inputs(model, blocks[0], calib_ids, batch_size=3, out_dtype=torch.float32)
        assert torch.allclose(h, expected[0], atol=1e-6)
        for i, block in enumerate(blocks[:-1]):  # the last hidden state has the final norm applied
            h = run_block(block, h, args[i])
            assert torch.allclose(h, expected[i + 1], atol=1e-5), f"block {i}"


def test_arch_table_knows_the_lm_head_and_norm(tiny):
    model = tiny("gpt_neox")
    facts = arch_facts(model)
    assert facts.lm_head == "embed_out" and get_module(model, facts.final_norm) is not None
