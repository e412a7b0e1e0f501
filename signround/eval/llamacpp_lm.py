"""An lm-eval ``LM`` on llama.cpp (llama-cpp-python ``Llama.eval`` + ``scores``) for GGUF files.

Why not lm-eval's own ``gguf`` backend: it asks a llama.cpp server for echoed prompt logprobs, which
llama-cpp-python computes wrongly (multiple-choice accuracy at chance) and it has no
``loglikelihood_rolling``. Here every score is read from the logits of one ``eval`` of the tokens, and
rolling perplexity uses HFLM's windows (``max_length`` tokens, one token of context, BOS first), so a GGUF
and the same weights in transformers give the same numbers.

lm-eval is imported on first use (``make_llamacpp_lm``), never at module import: it is optional.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["make_llamacpp_lm", "DEFAULT_MAX_LENGTH"]

# Context of the evaluation windows when the caller gives none: the model's training context up to this
# (the logits of every position are kept, n_ctx x vocab floats: 2048 x 49152 x 4 B = 400 MB for SmolLM2).
DEFAULT_MAX_LENGTH = 2048


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def make_llamacpp_lm(model_path: "str | Path", max_length: int | None = None, n_threads: int | None = None,
                     max_gen_toks: int = 256) -> Any:
    """A ``LlamaCppLM`` (an lm-eval ``TemplateLM``) on the GGUF file ``model_path``."""
    import llama_cpp
    from lm_eval import utils
    from lm_eval.api.model import TemplateLM

    class LlamaCppLM(TemplateLM):
        """Log-likelihoods and greedy generation from llama.cpp's logits (one ``eval`` per window)."""

        def __init__(self) -> None:
            super().__init__()
            probe = llama_cpp.Llama(model_path=os.fspath(model_path), vocab_only=True, verbose=False)
            meta = dict(probe.metadata)
            probe.close()
            train_ctx = int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", DEFAULT_MAX_LENGTH))
            self._max_length = int(max_length or min(train_ctx, DEFAULT_MAX_LENGTH))
            threads = n_threads or max(1, len(os.sched_getaffinity(0)))
            # one position more than a window: a rolling window feeds max_length tokens, a continuation up to that
            self.llm = llama_cpp.Llama(model_path=os.fspath(model_path), n_ctx=self._max_length + 1,
                                       n_batch=min(512, self._max_length + 1), logits_all=True, n_threads=threads,
                                       verbose=False)
            self.max_gen_toks = max_gen_toks

        def close(self) -> None:
            """Free llama.cpp's model and context now (not at interpreter exit, when its library may be gone)."""
            self.llm.close()

        # -- tokens ------------------------------------------------------------------------------
        @property
        def eot_token_id(self) -> int:
            return int(self.llm.token_eos())

        @property
        def prefix_token_id(self) -> int:
            bos = int(self.llm.token_bos())
            return bos if bos >= 0 else self.eot_token_id

        @property
        def max_length(self) -> int:
            return self._max_length

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
            return self.llm.tokenize(string.encode("utf-8"), add_bos=bool(add_special_tokens), special=False)

        def tok_decode(self, tokens: list[int]) -> str:
            return self.llm.detokenize(tokens).decode("utf-8", errors="ignore")

        # -- scoring -----------------------------------------------------------------------------
        def _logprobs(self, tokens: list[int], last: int) -> np.ndarray:
            """(last, vocab) log-probabilities of the token after each of the last ``last`` positions.

            The longest prefix shared with the previous call is not evaluated again (llama.cpp keeps its keys
            and values, and ``scores`` its logits): a multiple-choice question's context is read once.
            """
            llm = self.llm
            n = min(llm.n_tokens, len(tokens) - 1)  # evaluate at least one token
            differ = np.nonzero(llm.input_ids[:n] != np.asarray(tokens[:n]))[0]
            llm.n_tokens = int(differ[0]) if len(differ) else n  # eval() drops the cache from here on
            llm.eval(tokens[llm.n_tokens:])
            return _log_softmax(np.asarray(llm.scores[len(tokens) - last: len(tokens)]))

        def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
            whole = (context + continuation)[-(self._max_length + 1):]
            logp = self._logprobs(whole[:-1], len(continuation))
            targets = np.asarray(continuation)
            picked = logp[np.arange(len(continuation)), targets]
            return float(picked.sum()), bool((logp.argmax(-1) == targets).all())

        def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list:
            out = []
            for key, context, continuation in requests:
                result = self._score(list(context), list(continuation))
                out.append(result)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, result)
            return out

        def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
            """Sum of every token's log-probability, in HFLM's windows (BOS first, one token of context)."""
            out = []
            for (string,) in (r.args for r in requests):
                windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self._max_length, context_len=1))
                total = sum(self._score(ctx, cont)[0] for ctx, cont in windows)
                out.append(total)
                self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            return out

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            """Greedy decoding until a stop string, EOS or ``max_gen_toks`` (sampling options are ignored)."""
            out = []
            for context, gen_kwargs in (r.args for r in requests):
                kwargs = dict(gen_kwargs or {})
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                budget = int(kwargs.get("max_gen_toks", self.max_gen_toks))
                keep = max(1, self._max_length - budget)  # room for the answer in the window
                ids = self.tok_encode(context)[-keep:] or [self.prefix_token_id]
                self.llm.reset()
                self.llm.eval(ids)
                generated: list[int] = []
                text = ""
                for _ in range(budget):
                    nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
                    if nxt == self.eot_token_id or self.llm.n_tokens >= self._max_length + 1:
                        break
                    generated.append(nxt)
                    text = self.tok_decode(generated)
                    if any(u in text for u in until):
                        break
                    self.llm.eval([nxt])
                for u in until:
                    text = text.split(u)[0]
                out.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            return out

    return LlamaCppLM()
