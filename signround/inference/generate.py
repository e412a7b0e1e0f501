"""``signround generate``: try a checkpoint on CPU in one line, tokens streamed, speed reported.

Greedy decoding through ``decode.greedy_decode`` (the loop the speed benchmark measures; the same prompt
gives the same text, so runs compare). The speed line separates the prompt (prefill: time to the first
new token) from decoding (the tokens after it), since one is compute-bound and the other memory-bound.
Several prompts decode as one left-padded batch (each row's tokens are its prompt's alone); their texts are
written when the batch ends, one ``[i] text`` block per prompt, instead of streamed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from .checkpoint import CheckpointError, read_config

__all__ = ["GenerateResult", "generate_text"]


@dataclass(frozen=True)
class GenerateResult:
    prompt_tokens: int  # all prompts' tokens, padding not counted
    new_tokens: int  # decode steps (one new token per prompt each)
    prefill_s: float  # prompt in, first new token out
    decode_s: float  # the remaining new tokens
    prompts: int = 1

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0

    def summary(self) -> str:
        batch = f" x {self.prompts} prompts" if self.prompts > 1 else ""
        return (f"{self.new_tokens} new tokens{batch}; prompt {self.prompt_tokens} tokens in {self.prefill_s:.3f} s; "
                f"decode {self.decode_tokens_per_s:.2f} tokens/s{' per prompt' if batch else ''}")


def _text_streamer(tokenizer, out: TextIO):
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        """TextStreamer writing the new text to ``out`` (the prompt is never fed to it)."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return Streamer(tokenizer, skip_prompt=False, skip_special_tokens=True)


def generate_text(model_dir: "str | Path", prompt: "str | list[str]", max_new_tokens: int = 64,
                  backend: str | None = None, dtype: str = "bfloat16", out: "TextIO | None" = None) -> GenerateResult:
    """Load ``model_dir`` (quantized or float) and write a greedy continuation of ``prompt`` to ``out`` (streamed for
    one prompt; for several, one ``[i] text`` block each once the batch is done)."""
    from transformers import AutoTokenizer

    from .decode import greedy_decode
    from .load import load_quantized

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    out = sys.stdout if out is None else out  # the current stdout, not the one at import
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("no prompt given")
    folder = Path(model_dir)
    read_config(folder)  # a missing directory or config.json is named before anything loads
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder}: no tokenizer transformers can load ({e}); generate needs one") from None
    encoded = [tokenizer(p, return_tensors="pt").input_ids[0] for p in prompts]
    empty = [i for i, e in enumerate(encoded) if len(e) == 0]
    if empty:
        raise ValueError(f"prompt {empty[0]} encodes to no tokens" if len(encoded) > 1 else
                         "the prompt encodes to no tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = 0 if pad is None else int(pad)
    model = load_quantized(folder, dtype=dtype, backend=backend)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos = tokenizer.eos_token_id if eos is None else eos
    if len(encoded) == 1:
        ids = encoded[0][None]
        streamer = _text_streamer(tokenizer, out)
        result = greedy_decode(model, ids, max_new_tokens, on_token=lambda t: streamer.put(t[0]), eos_token_id=eos)
        streamer.end()
        return GenerateResult(ids.shape[1], result.tokens.shape[1], result.prefill_s, result.decode_s)
    width = max(len(e) for e in encoded)  # left padding: every prompt's last token in the last column
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, width - len(e):], mask[i, width - len(e):] = e, 1
    result = greedy_decode(model, ids, max_new_tokens, eos_token_id=eos, attention_mask=mask, pad_token_id=pad)
    for i, row in enumerate(result.tokens):
        out.write(f"[{i}] {tokenizer.decode(row, skip_special_tokens=True)}\n")
    out.flush()
    return GenerateResult(int(mask.sum()), result.tokens.shape[1], result.prefill_s, result.decode_s, len(encoded))
