"""Turn one source's items (texts and token-id rows) into rows of exactly ``seqlen`` tokens.

Two ways, as in AutoRound (reference §7): by default every sample is truncated to ``seqlen`` and samples
shorter than that are dropped (a padded sample would teach the tuner about padding); with ``concat`` all
documents are joined, EOS between texts, and cut into ``seqlen`` chunks, so short texts are not wasted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

__all__ = ["TokenRow", "render_chat", "special_prefix", "to_rows", "concat_rows", "keep_full_rows"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenRow:
    """One sample: ``ids`` (L,) int64 and ``mask`` (L,) int64 (1 = valid, 0 = pad) or None when all are valid."""

    ids: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.ids.dim() != 1:
            raise ValueError(f"a token row must be 1-D, got shape {tuple(self.ids.shape)}")
        if self.mask is not None and self.mask.shape != self.ids.shape:
            raise ValueError(f"attention mask shape {tuple(self.mask.shape)} != input_ids shape {tuple(self.ids.shape)}")

    def __len__(self) -> int:
        return self.ids.numel()


def render_chat(tokenizer, texts: list[str], system_prompt: str | None, source: str) -> list[str]:
    """Each text as a user turn (after an optional system turn) with ``add_generation_prompt=True``.

    A template that rejects the system role (e.g. Gemma's) is retried without it, with one warning.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{source}: apply_chat_template was requested but the tokenizer has no chat template")
    use_system = system_prompt is not None
    rendered = []
    for text in texts:
        user = [{"role": "user", "content": text}]
        messages = [{"role": "system", "content": system_prompt}, *user] if use_system else user
        try:
            rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception as e:  # jinja raises TemplateError (or anything the template calls raise_exception with)
            if not use_system:
                raise ValueError(f"{source}: the tokenizer's chat template failed on a user message: {e}") from e
            logger.warning("%s: the chat template rejects the system role (%s); rendering without it", source, e)
            use_system = False
            rendered.append(tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True))
    return rendered


def special_prefix(tokenizer) -> list[int]:
    """Tokens the tokenizer puts before every text by default (e.g. Llama's BOS; none for SmolLM2)."""
    probe = "calibration"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for n in range(len(with_special) - len(plain) + 1):  # where the plain tokens start; before them: the prefix
        if with_special[n : n + len(plain)] == plain:
            return list(with_special[:n])
    return []


def to_rows(tokenizer, items: list, *, add_special_tokens: bool, max_len: int | None, eos: int | None) -> list[TokenRow]:
    """Texts -> token rows (truncated to ``max_len``, ``eos`` appended when given); rows pass through."""
    texts = [(i, t) for i, t in enumerate(items) if isinstance(t, str)]
    rows: list[TokenRow | None] = [None] * len(items)
    if texts:
        if tokenizer is None:
            raise ValueError("a tokenizer is needed to calibrate on text; pass one, or pass token ids")
        encoded = tokenizer(
            [t for _, t in texts],
            add_special_tokens=add_special_tokens,
            truncation=max_len is not None,
            max_length=max_len,
            verbose=False,
        )["input_ids"]
        suffix = [eos] if eos is not None else []
        for (i, _), ids in zip(texts, encoded):
            rows[i] = TokenRow(torch.tensor(list(ids) + suffix, dtype=torch.int64))
    for i, item in enumerate(items):
        if isinstance(item, TokenRow):
            rows[i] = item
        elif isinstance(item, list):
            rows[i] = TokenRow(torch.tensor(item, dtype=torch.int64))
        elif not isinstance(item, str):
            raise TypeError(f"calibration item {i} has unsupported type {type(item).__name__}")
    return rows  # type: ignore[return-value]


def concat_rows(rows: list[TokenRow], seqlen: int, prefix: list[int]) -> list[TokenRow]:
    """Join the valid tokens of all rows and cut full chunks of ``seqlen`` (each starting with ``prefix``)."""
    if len(prefix) >= seqlen:
        raise ValueError(f"seqlen={seqlen} leaves no room after the tokenizer's {len(prefix)} prefix tokens")
    parts = [r.ids if r.mask is None else r.ids[r.mask.bool()] for r in rows]
    stream = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)  # (total,)
    body = seqlen - len(prefix)
    n = stream.numel() // body
    chunks = stream[: n * body].view(n, body)  # (n, body)
    if prefix:
        chunks = torch.cat([torch.tensor(prefix, dtype=torch.int64).expand(n, -1), chunks], dim=1)  # (n, seqlen)
    return [TokenRow(c.clone()) for c in chunks]


def keep_full_rows(rows: list[TokenRow], seqlen: int, source: str) -> list[TokenRow]:
    """Rows truncated to ``seqlen``; shorter ones are dropped with a warning (an error when none is left)."""
    kept = [TokenRow(r.ids[:seqlen], None if r.mask is None else r.mask[:seqlen]) for r in rows if len(r) >= seqlen]
    if not kept:
        longest = max((len(r) for r in rows), default=0)
        raise ValueError(
            f"{source}: none of its {len(rows)} samples is at least seqlen={seqlen} tokens long (the longest has "
            f"{longest}); add ':concat=True' to the dataset spec (concat=True for in-memory data) or lower seqlen"
        )
    if len(kept) < len(rows):
        logger.warning(
            "%s: %d of %d samples have at least seqlen=%d tokens; dropped the %d shorter ones "
            "(concat=True would join them instead)",
            source, len(kept), len(rows), seqlen, len(rows) - len(kept),
        )
    return kept
