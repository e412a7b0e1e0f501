"""``signround generate``: try a checkpoint on CPU in one line, tokens streamed, speed reported.

Greedy decoding (the same prompt gives the same text, so runs compare). The speed line separates the
prompt (prefill: time to the first new token) from decoding (the tokens after it), since one is
compute-bound and the other memory-bound.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

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


def _timed_streamer(tokenizer, out: TextIO):
    from transformers import TextStreamer

    class TimedStreamer(TextStreamer):
        """TextStreamer writing to ``out`` that records when each batch of new tokens arrives."""

        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.times: list[float] = []
            self.seen_prompt = False

        def put(self, value: torch.Tensor) -> None:
            if self.seen_prompt:
                self.times.append(time.perf_counter())
            self.seen_prompt = True
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return TimedStreamer()


def generate_text(model_dir: "str | Path", prompt: str, max_new_tokens: int = 64, backend: str | None = None,
                  dtype: str = "bfloat16", out: TextIO = sys.stdout) -> GenerateResult:
    """Load ``model_dir`` (quantized or float) and stream a greedy continuation of ``prompt`` to ``out``."""
    from transformers import AutoTokenizer

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
    streamer = _timed_streamer(tokenizer, out)
    start = time.perf_counter()
    with torch.inference_mode():
        result = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, streamer=streamer, pad_token_id=tokenizer.pad_token_id
                                if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    new = result.shape[1] - ids.shape[1]
    times = streamer.times or [time.perf_counter()]
    return GenerateResult(ids.shape[1], new, times[0] - start, times[-1] - times[0])
