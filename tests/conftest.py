"""Fixtures shared by every test tier: tiny random models, the real SmolLM2 model, calibration rows."""

from __future__ import annotations

import pytest
import torch

from signround.testing import smollm2_hf_dir, tiny_model


@pytest.fixture
def tiny():
    """Factory: tiny("llama") -> a fresh random model of that architecture (hidden 128, 2 blocks)."""
    return tiny_model


@pytest.fixture
def calib_ids():
    """Random calibration rows for tiny models (vocab 512): (8, 32) int64, fixed seed."""
    return torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct as a float32 checkpoint (converted once per machine, then cached)."""
    return smollm2_hf_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir, tmp_path_factory):
    """A tiny random Llama checkpoint (2 blocks, 256 positions) saved with the SmolLM2 tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "tiny"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
