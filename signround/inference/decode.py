"""Greedy decoding on CPU: a reserved KV cache and a single-query attention that is fast in bfloat16.

Why (profile of SmolLM2-135M decode after a 512-token prompt, benchmarks/RESULTS.md "Packed inference
(decode)"): with transformers' defaults a bfloat16 model spends most of a token outside its matmuls.
``DynamicCache`` grows every layer's keys and values with ``torch.cat`` (a new allocation and a copy of the
whole cache per layer per token), and SDPA's CPU flash kernel takes ~7x longer in bfloat16 than in
float32 for one query row (1.1-1.4 ms vs 0.2 ms per layer at 544 keys). So:

- ``reserved_cache(n)``: each layer's keys/values live in a buffer allocated once for ``n`` positions
  (doubled if outgrown); ``update`` writes the new rows in place and returns views of the filled prefix.
- ``decode_attention``: one query row runs SDPA in float32 with the query heads of each key-value head
  stacked as rows (``(B, kv_heads, group, D)``, no ``repeat_kv`` copy) over a float32 cache; the
  products of bfloat16 values are exact in float32, so this is at least as precise as SDPA's bfloat16
  kernel. Longer queries (the prompt) go to transformers' SDPA unchanged, so prefill is the usual one.
- decode steps run with oneDNN off: torch's own one-row bfloat16 matmul is ~1.7x faster (the lm_head).
- ``greedy_decode``: the loop every benchmark row and ``signround generate`` share, so speeds compare. Several
  prompts run as one batch, left-padded with an ``attention_mask``; positions count real tokens only
  (as transformers' ``generate`` derives them), so each row's tokens are those of its prompt alone.

The attention is added to transformers' attention registry under ``DECODE_ATTENTION`` (its public
extension point) on first use and selected only for the duration of a ``greedy_decode`` call.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

__all__ = ["DECODE_ATTENTION", "DecodeResult", "decode_attention", "greedy_decode", "reserved_cache",
           "using_decode_attention"]

DECODE_ATTENTION = "signround_cpu_decode"  # its name in transformers' attention registry


def _reserved_layer_class():
    """The cache layer class, built on first use (transformers is imported lazily, as everywhere here)."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        """A layer's keys/values in a buffer reserved for ``capacity`` positions; views of the filled prefix out."""

        def __init__(self, capacity: int, dtype: "torch.dtype | None") -> None:
            super().__init__()
            self.capacity, self.length, self.dtype = capacity, 0, dtype

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.device = key_states.device
            self._keys = key_states.new_empty(0, dtype=self.dtype or key_states.dtype)
            self._values = value_states.new_empty(0, dtype=self.dtype or value_states.dtype)
            self.length = 0
            self.is_initialized = True

        def _reserve(self, key_states: torch.Tensor, value_states: torch.Tensor, need: int) -> None:
            if self._keys.numel() and need <= self._keys.shape[2]:
                return
            size = max(need, self.capacity, 2 * (self._keys.shape[2] if self._keys.numel() else 0))
            keys = self._keys.new_empty(*key_states.shape[:2], size, key_states.shape[3])  # (B, kv_heads, size, D)
            values = self._values.new_empty(*value_states.shape[:2], size, value_states.shape[3])
            if self.length:
                keys[:, :, : self.length] = self._keys[:, :, : self.length]
                values[:, :, : self.length] = self._values[:, :, : self.length]
            self._keys, self._values = keys, values

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[2]
            self._reserve(key_states, value_states, self.length + n)
            self._keys[:, :, self.length: self.length + n] = key_states
            self._values[:, :, self.length: self.length + n] = value_states
            self.length += n
            self.keys = self._keys[:, :, : self.length]  # (B, kv_heads, length, D) views
            self.values = self._values[:, :, : self.length]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def reset(self) -> None:
            self.length = 0
            self.keys = self.values = None
            self.is_initialized = False

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
            self.length = max(0, self.length + tokens_to_remove)
            self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    return ReservedLayer


def reserved_cache(capacity: int, dtype: "torch.dtype | None" = None):
    """A transformers ``Cache`` whose layers reserve ``capacity`` positions at their first update, holding keys and
    values in ``dtype`` (default: the model's). float32 for a bfloat16 model: exact (the values are bfloat16) and
    saves ``decode_attention`` converting the whole cache at every token; only ``decode_attention`` reads it."""
    from functools import partial

    from transformers.cache_utils import Cache

    if capacity < 1:
        raise ValueError(f"capacity must be at least 1 position, got {capacity}")
    return Cache(layer_class_to_replicate=partial(_reserved_layer_class(), capacity, dtype))


def decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: "torch.Tensor | None", scaling: "float | None" = None, dropout: float = 0.0,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: one query row through float32 SDPA, anything longer through its own."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, q_len, d = query.shape  # (B, heads, q, D); key/value (B, kv_heads, L, D)
    kv_heads = key.shape[1]
    if q_len != 1 or dropout or kwargs.get("softcap") is not None or heads % kv_heads:
        key, value = key.to(query.dtype), value.to(query.dtype)  # a float32 cache holds bfloat16 values: exact
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    group = heads // kv_heads  # query head h reads key-value head h // group (repeat_kv's order)
    q = query.reshape(b, kv_heads, group, d).float()  # (B, kv_heads, group, D): the group's rows share K and V
    mask = attention_mask
    if mask is not None:  # (B, 1 or heads, 1, >= L): bool (True = keep) or additive
        mask = mask[..., -key.shape[2]:].expand(b, heads, 1, key.shape[2]).reshape(b, kv_heads, group, key.shape[2])
        mask = mask if mask.dtype == torch.bool else mask.float()
    out = F.scaled_dot_product_attention(q, key.float(), value.float(), attn_mask=mask, scale=scaling)
    return out.reshape(b, heads, 1, d).transpose(1, 2).to(query.dtype), None  # (B, 1, heads, D)


def _register() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    if DECODE_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(DECODE_ATTENTION, decode_attention)
        AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)  # the masks SDPA gets (None when causal suffices)


@contextmanager
def using_decode_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model``'s attention through ``decode_attention`` inside the block, its own one after it."""
    _register()
    config = model.config
    before = config._attn_implementation
    model.set_attn_implementation(DECODE_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@contextmanager
def _without_onednn() -> Iterator[None]:
    """torch's own CPU kernels instead of oneDNN inside the block: for one-row bfloat16 matmuls oneDNN is ~1.7x
    slower (SmolLM2's 49152 x 576 lm_head: 15.3 vs 8.9 ms, the same float32 accumulation and bf16 output)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@dataclass(frozen=True)
class DecodeResult:
    tokens: torch.Tensor  # (B, new) the generated ids; a row that stopped early is filled with pad ids
    prefill_s: float  # the prompt's forward and the first new token
    decode_s: float  # the remaining new tokens

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode steps per second (each step one new token for every row of the batch)."""
        n = self.tokens.shape[1] - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


def _check_batch(ids: torch.Tensor, attention_mask: "torch.Tensor | None", max_new_tokens: int) -> None:
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"greedy_decode takes prompts of shape (B, T) with T >= 1, got {tuple(ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if attention_mask is None:
        if ids.shape[0] > 1:
            raise ValueError(f"{ids.shape[0]} prompts need an attention_mask (left padding: 0 for pad positions)")
        return
    if attention_mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, the prompts {tuple(ids.shape)}")
    mask = attention_mask.bool()
    if not bool(mask[:, -1].all()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("attention_mask must be left padding: each row's zeros before its ones, its last token real")


def greedy_decode(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int,
                  on_token: "Callable[[torch.Tensor], None] | None" = None,
                  eos_token_id: "int | list[int] | None" = None, cache_dtype: "torch.dtype | None" = torch.float32,
                  attention_mask: "torch.Tensor | None" = None, pad_token_id: int = 0) -> DecodeResult:
    """Greedy continuation of ``ids`` (B, T): a reserved cache, ``decode_attention``, one forward per token.

    Several prompts are left-padded with ``attention_mask`` (B, T) (1 real, 0 pad; required when B > 1).
    ``on_token`` gets each step's new ids as a (B, 1) tensor as soon as they are chosen; a row stops after an
    ``eos_token_id`` (one id or several, as in a generation config) and gets ``pad_token_id`` after it, as in
    transformers' ``generate``; decoding ends when every row has stopped.
    ``cache_dtype``: see ``reserved_cache`` (None: the model's dtype)."""
    _check_batch(ids, attention_mask, max_new_tokens)
    stop = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    stop_ids = torch.tensor(stop, dtype=ids.dtype)
    mask = None if attention_mask is None else attention_mask.to(torch.long)
    extra = {}
    if mask is not None:  # positions of real tokens 0, 1, ...; pads get 1 (masked anyway), as generate does
        extra = dict(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 1))
    cache = reserved_cache(ids.shape[1] + max_new_tokens, cache_dtype)
    new: list[torch.Tensor] = []
    done = torch.zeros(ids.shape[0], 1, dtype=torch.bool)
    with using_decode_attention(model), torch.inference_mode():
        start = time.perf_counter()
        out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, **extra)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        first = time.perf_counter()
        while True:
            nxt = nxt.masked_fill(done, pad_token_id)
            new.append(nxt)
            if on_token is not None:
                on_token(nxt)
            done = done | torch.isin(nxt, stop_ids)
            if len(new) == max_new_tokens or bool(done.all()):
                break
            if mask is not None:
                extra = dict(position_ids=extra["position_ids"][:, -1:] + 1)
                mask = torch.cat((mask, mask.new_ones(mask.shape[0], 1)), 1)
                extra["attention_mask"] = mask
            with _without_onednn():
                out = model(input_ids=nxt, cache=cache, use_cache=True, **extra)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        end = time.perf_counter()
    return DecodeResult(torch.cat(new, 1), first - start, end - first)
