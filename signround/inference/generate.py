"""``signround generate``: try a checkpoint on CPU in one line, tokens streamed, speed reported.

Greedy decoding through ``decode.greedy_decode`` (the loop the speed benchmark measures; the same prompt
gives the same text, so runs compare). The speed line separates the prompt (prefill: time to the first
new token) from decoding (the tokens after it), since one is compute-bound and the other memory-bound.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .checkpoint import CheckpointError, read_config

__all__ = ["GenerateResult", "generate_text"]


@dataclass(frozen=True)
class GenerateResult:
    prompt_tokens: int
    new_tokens: int
    prefill_s: float  # prompt in, first new token out
    decode_s: float  # the remaining new tokens

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.new_tokens} new tokens; prompt {self.prompt_tokens} tokens in {self.prefill_s:.3f} s; decode "
                f"{self.decode_tokens_per_s:.2f} tokens/s")


def _text_streamer(tokenizer, out: TextIO):
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        """TextStreamer writing the new text to ``out`` (the prompt is never fed to it)."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return Streamer(tokenizer, skip_prompt=False, skip_special_tokens=True)


def generate_text(model_dir: "str | Path", prompt: str, max_new_tokens: int = 64, backend: str | None = None,
                  dtype: str = "bfloat16", out: TextIO = sys.stdout) -> GenerateResult:
    """Load ``model_dir`` (quantized or float) and stream a greedy continuation of ``prompt`` to ``out``."""
    from transformers import AutoTokenizer

    from .decode import greedy_decode
    from .load import load_quantized

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    folder = Path(model_dir)
    read_config(folder)  # a missing directory or config.json is named before anything loads
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder}: no tokenizer transformers can load ({e}); generate needs one") from None
    model = load_quantized(folder, dtype=dtype, backend=backend)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise ValueError("the prompt encodes to no tokens")
    streamer = _text_streamer(tokenizer, out)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    result = greedy_decode(model, ids, max_new_tokens, on_token=lambda t: streamer.put(t[0]),
                           eos_token_id=tokenizer.eos_token_id if eos is None else eos)
    streamer.end()
    return GenerateResult(ids.shape[1], result.tokens.shape[1], result.prefill_s, result.decode_s)
