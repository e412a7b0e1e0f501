"""Helpers for the interop tier: a tokenizer for the tiny models, real-loader calls, logit comparison."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from signround.eval.metrics import compare_logits


def needs(*modules: str):
    """Skip (with the pip command in the reason) unless every module is importable."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)} "
                                                    f"(pip install -c requirements/constraints.txt -r requirements/interop.txt)")


def byte_tokenizer():
    """A byte-level tokenizer with no merges: ids 0-2 are pad/bos/eos, then the 256 bytes (fits vocab 512)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@torch.no_grad()
def hf_logits(folder: Path, ids: torch.Tensor, **kwargs) -> tuple[torch.Tensor, set[str]]:
    """Logits from transformers' own loading path (plus the quantized module classes it chose)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", **kwargs).eval()
    kinds = {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__}
    return model(input_ids=ids, use_cache=False).logits.float(), kinds


def assert_close(logits: torch.Tensor, ref: torch.Tensor, rel_max: float, argmax_min: float = 0.95) -> tuple[float, float]:
    argmax, rel, _ = compare_logits(logits, ref)
    assert rel <= rel_max and argmax >= argmax_min, f"rel {rel:.5f} (max {rel_max}), argmax {argmax:.4f} (min {argmax_min})"
    return argmax, rel
