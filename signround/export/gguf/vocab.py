"""Tokenizer metadata for a GGUF file, read from an in-memory Hugging Face (fast) tokenizer.

Two tokenizer families are written, as llama.cpp's converter writes them:

- byte-level BPE (GPT-2 style: SmolLM, Llama 3, Qwen): ``tokenizer.ggml.model = "gpt2"``, the
  tokens in id order, token types, merges, and ``tokenizer.ggml.pre``, the name of llama.cpp's
  pre-tokenizer regex. llama.cpp's converter recognises it by hashing a test encoding; here it is
  read from the tokenizer's ``pre_tokenizer`` structure (``PRE_TOKENIZER_RULES``), or given
  explicitly with ``tokenizer_pre=``;
- SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma): ``model = "llama"`` with
  BYTE tokens and scores. Without the ``tokenizer.model`` file the scores are derived from the merge
  ranks (a token made by merge r scores -r), which gives llama.cpp's SPM tokenizer the same merge
  priority as the BPE model.

Ids missing from the vocabulary (the embedding is larger than the tokenizer) become ``[PAD<id>]``
tokens of type UNUSED. Special added tokens are CONTROL, other added tokens USER_DEFINED.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import gguf

__all__ = ["GGUFVocab", "vocab_from_tokenizer", "write_vocab", "PRE_TOKENIZER_RULES", "detect_pre_tokenizer"]

logger = logging.getLogger(__name__)

_SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def _pieces(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    return list(pre.get("pretokenizers", [])) if pre.get("type") == "Sequence" else [pre]


def _split_regex(piece: dict) -> str:
    pattern = piece.get("pattern", {})
    return pattern.get("Regex", pattern.get("String", "")) if isinstance(pattern, dict) else str(pattern)


# (llama.cpp pre-tokenizer name, predicate over the list of HF pre-tokenizer pieces), first match wins.
PRE_TOKENIZER_RULES: tuple[tuple[str, Any], ...] = (
    ("gpt-2", lambda p: [x["type"] for x in p] == ["ByteLevel"] and p[0].get("use_regex", True)),
    ("smollm", lambda p: [x["type"] for x in p] == ["Digits", "ByteLevel"] and p[0].get("individual_digits")),
    ("llama-bpe", lambda p: [x["type"] for x in p] == ["Split", "ByteLevel"] and r"\p{N}{1,3}" in _split_regex(p[0])),
    ("qwen2", lambda p: [x["type"] for x in p] == ["Split", "ByteLevel"]
     and re.search(r"\|\\p\{N\}\|", _split_regex(p[0])) is not None),
)


def detect_pre_tokenizer(tokenizer_json: dict) -> str | None:
    pieces = _pieces(tokenizer_json.get("pre_tokenizer"))
    for name, matches in PRE_TOKENIZER_RULES:
        try:
            if matches(pieces):
                return name
        except (KeyError, IndexError, TypeError):
            continue
    return None


@dataclass
class GGUFVocab:
    model: str  # "gpt2" or "llama"
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None


def _merge_strings(merges: list) -> list[str]:
    if not merges or isinstance(merges[0], str):
        return list(merges)
    # Pairs (tokenizers >= 0.20): llama.cpp splits a merge at its first space, so a space inside a
    # part is written shifted by 256 (U+0120), as gguf-py does.
    return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair) for pair in merges]


def _special_ids(tokenizer: Any, config: Any, vocab_size: int) -> dict[str, int]:
    ids: dict[str, int] = {}
    for kind in _SPECIAL_KINDS:
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if tid is None and config is not None:
            tid = getattr(config, f"{kind}_token_id", None)
        if isinstance(tid, list):
            tid = tid[0] if tid else None
        if isinstance(tid, int) and 0 <= tid < vocab_size:
            ids[kind] = tid
    return ids


def _adds_specials(tokenizer: Any, special: dict[str, int]) -> tuple[bool, bool]:
    with_sp = tokenizer("a b", add_special_tokens=True)["input_ids"]
    without = tokenizer("a b", add_special_tokens=False)["input_ids"]
    if len(with_sp) == len(without):
        return False, False
    add_bos = bool(with_sp) and with_sp[0] == special.get("bos", -1) and (not without or without[0] != with_sp[0])
    add_eos = bool(with_sp) and with_sp[-1] == special.get("eos", -1) and (not without or without[-1] != with_sp[-1])
    return add_bos, add_eos


def vocab_from_tokenizer(tokenizer: Any, vocab_size: int, config: Any = None, tokenizer_pre: str | None = None) -> GGUFVocab:
    """Everything llama.cpp needs of a tokenizer, for an embedding of ``vocab_size`` rows."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"the GGUF writer needs a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    tj = json.loads(backend.to_str())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer model {model.get('type')!r} is not supported by the GGUF writer (BPE only)")
    spm = bool(model.get("byte_fallback"))
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    if reverse and max(reverse) >= vocab_size:
        raise ValueError(f"tokenizer has token id {max(reverse)} but the model's vocabulary has {vocab_size} rows")
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    merges = _merge_strings(model.get("merges", []))
    rank = {m.replace(" ", ""): r for r, m in enumerate(merges)} if spm else {}
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        text = reverse.get(i)
        score = 0.0
        if text is None:
            text, kind = f"[PAD{i}]", gguf.TokenType.UNUSED
        elif i in added:
            kind = gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            score = -1000.0
        elif spm and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
            score = -float(rank[text]) - 1.0 if text in rank else 0.0
        tokens.append(text)
        types.append(int(kind))
        scores.append(score)
    special = _special_ids(tokenizer, config, vocab_size)
    if spm and "unk" in special:
        types[special["unk"]] = int(gguf.TokenType.UNKNOWN)
    pre = None
    if not spm:
        pre = tokenizer_pre or detect_pre_tokenizer(tj)
        if pre is None:
            raise ValueError(
                "cannot tell which llama.cpp pre-tokenizer matches this tokenizer's pre_tokenizer "
                f"{json.dumps(tj.get('pre_tokenizer'))[:200]}; pass tokenizer_pre= (one of "
                f"{', '.join(n for n, _ in PRE_TOKENIZER_RULES)}, or another llama.cpp name)"
            )
    add_bos, add_eos = _adds_specials(tokenizer, special)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    normalizer = json.dumps(tj.get("normalizer") or {})
    return GGUFVocab(
        model="llama" if spm else "gpt2",
        tokens=tokens,
        token_types=types,
        scores=scores if spm else None,
        merges=[] if spm else merges,
        pre=pre,
        special_ids=special,
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=('"Prepend"' in normalizer) if spm else False,
        chat_template=template if isinstance(template, str) else None,
    )


def write_vocab(vocab: GGUFVocab, w: gguf.GGUFWriter) -> None:
    w.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    for kind, tid in vocab.special_ids.items():
        getattr(w, f"add_{kind}_token_id")(tid)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)
