"""Named GGUF mixes (``q4_k_m`` ...) and the per-tensor type choice llama.cpp makes for them.

A port of llama.cpp's ``llama_tensor_get_type`` (``src/llama-quant.cpp``) for the mixes listed in
``MIXES``, as a pure function over (GGUF tensor name, shape) that returns a printable plan
``{name: TypeChoice(type, reason)}``. Rules, in llama.cpp's order:

1. only 2-D tensors whose name ends in ``weight`` and is not a ``*_norm.weight`` are quantized;
2. ``output.weight`` (and ``token_embd.weight`` when the embeddings are tied) -> Q6_K, or Q8_0 when
   the mix is q8_0 or the row size is not a multiple of the mix's block size;
3. "more bits" layers (``i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2``) and per-mix upgrades for
   attn_v / ffn_down / attn_output (see ``_upgrade``);
4. shape fallback when the row size is not a multiple of the type's block size:
   Q2_K, Q3_K -> Q4_0; Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0; and F16 if that still does not fit.

Not ported (documented differences): llama.cpp's LLM_TYPE_70B attn_v bump, Falcon-specific
branches, the IQ/TQ/MXFP4 mixes, user ``--tensor-type`` overrides.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable

import gguf

from ..quant.gguf.types import GGMLType, type_facts

__all__ = ["MixSpec", "MIXES", "TypeChoice", "mix_spec", "plan_tensor_types", "format_plan", "mix_names"]

logger = logging.getLogger(__name__)

T = GGMLType


@dataclass(frozen=True)
class MixSpec:
    """A llama.cpp file type: its ``general.file_type`` value and its default tensor type."""

    file_type: gguf.LlamaFileType
    default: GGMLType


MIXES: dict[str, MixSpec] = {
    "q4_0": MixSpec(gguf.LlamaFileType.MOSTLY_Q4_0, T.Q4_0),
    "q4_1": MixSpec(gguf.LlamaFileType.MOSTLY_Q4_1, T.Q4_1),
    "q5_0": MixSpec(gguf.LlamaFileType.MOSTLY_Q5_0, T.Q5_0),
    "q5_1": MixSpec(gguf.LlamaFileType.MOSTLY_Q5_1, T.Q5_1),
    "q8_0": MixSpec(gguf.LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
    "q2_k": MixSpec(gguf.LlamaFileType.MOSTLY_Q2_K, T.Q2_K),
    "q2_k_s": MixSpec(gguf.LlamaFileType.MOSTLY_Q2_K_S, T.Q2_K),
    "q3_k_s": MixSpec(gguf.LlamaFileType.MOSTLY_Q3_K_S, T.Q3_K),
    "q3_k_m": MixSpec(gguf.LlamaFileType.MOSTLY_Q3_K_M, T.Q3_K),
    "q3_k_l": MixSpec(gguf.LlamaFileType.MOSTLY_Q3_K_L, T.Q3_K),
    "q4_k_s": MixSpec(gguf.LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K),
    "q4_k_m": MixSpec(gguf.LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K),
    "q5_k_s": MixSpec(gguf.LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K),
    "q5_k_m": MixSpec(gguf.LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K),
    "q6_k": MixSpec(gguf.LlamaFileType.MOSTLY_Q6_K, T.Q6_K),
    "f16": MixSpec(gguf.LlamaFileType.MOSTLY_F16, T.F16),
    "bf16": MixSpec(gguf.LlamaFileType.MOSTLY_BF16, T.BF16),
    "f32": MixSpec(gguf.LlamaFileType.ALL_F32, T.F32),
}

_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def mix_names() -> list[str]:
    return list(MIXES)


def mix_spec(mix: str) -> MixSpec:
    key = mix.strip().lower().removeprefix("gguf:")
    if key not in MIXES:
        raise ValueError(f"unknown GGUF mix {mix!r}; valid: {', '.join(MIXES)}")
    return MIXES[key]


@dataclass(frozen=True)
class TypeChoice:
    qtype: GGMLType
    reason: str

    def __str__(self) -> str:
        return f"{self.qtype.name:5s} {self.reason}"


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_output.weight", "attn_output"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _upgrade(mix: str, cat: str, i: int, n: int, n_gqa: int, n_expert: int, has_imatrix: bool) -> tuple[GGMLType, str] | None:
    """llama.cpp's per-category override for ``mix`` (None: keep the default type)."""
    more = _more_bits(i, n)
    if cat == "attn_v":
        if n_expert == 8:
            return T.Q8_0, "attn_v of an 8-expert model"
        rules = {
            "q2_k": (T.Q4_K if n_gqa >= 4 else T.Q3_K, f"attn_v in q2_k (n_gqa {n_gqa})"),
            "q2_k_s": (T.Q4_K, f"attn_v in q2_k_s with n_gqa {n_gqa} >= 4") if n_gqa >= 4 else None,
            "q3_k_m": (T.Q5_K if i < 2 else T.Q4_K, f"attn_v #{i} in q3_k_m"),
            "q3_k_l": (T.Q5_K, "attn_v in q3_k_l"),
            "q4_k_m": (T.Q6_K, f"attn_v in more-bits layer {i}/{n}") if more else None,
            "q5_k_m": (T.Q6_K, f"attn_v in more-bits layer {i}/{n}") if more else None,
            "q4_k_s": (T.Q5_K, f"attn_v #{i} < 4 in q4_k_s") if i < 4 else None,
        }
        return rules.get(mix)
    if cat == "attn_k":
        return (T.Q8_0, "attn_k of an 8-expert model") if n_expert == 8 else None
    if cat == "ffn_down":
        rules = {
            "q2_k": (T.Q3_K, "ffn_down in q2_k"),
            "q2_k_s": (T.Q4_K, f"ffn_down in layer {i} < {n}/8") if i < n // 8 else None,
            "q3_k_m": (T.Q5_K, f"ffn_down in layer {i} < {n}/16") if i < n // 16 else (T.Q4_K, "ffn_down in q3_k_m"),
            "q3_k_l": (T.Q5_K, "ffn_down in q3_k_l"),
            "q4_k_m": (T.Q6_K, f"ffn_down in more-bits layer {i}/{n}") if more else None,
            "q5_k_m": (T.Q6_K, f"ffn_down in more-bits layer {i}/{n}") if more else None,
            "q4_k_s": (T.Q5_K, f"ffn_down in layer {i} < {n}/8") if i < n // 8 else None,
        }
        if has_imatrix and i < n // 8 and mix in ("q4_0", "q5_0"):
            rules[mix] = (T.Q4_1 if mix == "q4_0" else T.Q5_1, f"ffn_down in layer {i} < {n}/8 with an imatrix")
        return rules.get(mix)
    if cat == "attn_output":
        if n_expert == 8:
            upgraded = ("q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m")
            return (T.Q5_K, "attn_output of an 8-expert model") if mix in upgraded else None
        return {"q2_k": (T.Q3_K, "attn_output in q2_k"), "q3_k_m": (T.Q4_K, "attn_output in q3_k_m"),
                "q3_k_l": (T.Q5_K, "attn_output in q3_k_l")}.get(mix)
    if cat == "attn_qkv":
        return {"q3_k_m": (T.Q4_K, "fused qkv in q3_k_m"), "q3_k_l": (T.Q4_K, "fused qkv in q3_k_l"),
                "q4_k_m": (T.Q5_K, "fused qkv in q4_k_m"), "q5_k_m": (T.Q6_K, "fused qkv in q5_k_m")}.get(mix)
    return None


def _fallback(qtype: GGMLType, cols: int) -> tuple[GGMLType, str]:
    bs = type_facts(qtype).block_size
    if cols % bs == 0:
        return qtype, ""
    new = _FALLBACK.get(qtype, qtype)
    note = f"; row size {cols} not a multiple of {qtype.name} block {bs} -> "
    if cols % type_facts(new).block_size:
        return T.F16, note + "F16"
    return new, note + new.name


def plan_tensor_types(
    tensors: Iterable[tuple[str, tuple[int, ...]]],
    mix: str,
    n_layer: int,
    n_gqa: int = 1,
    n_expert: int = 0,
    has_imatrix: bool = False,
) -> dict[str, TypeChoice]:
    """``{gguf name: TypeChoice}`` for tensors given as (GGUF name, torch shape) pairs.

    ``n_gqa`` is n_head / n_head_kv. The embeddings count as tied when there is no ``output.weight``.
    Non-quantized tensors are listed with type F32 (what the writer stores them as).
    """
    key = mix.strip().lower().removeprefix("gguf:")
    spec = mix_spec(key)
    tensors = list(tensors)
    names = {n for n, _ in tensors}
    tied = "output.weight" not in names
    n_attn_v = sum(1 for n in names if _category(n) == "attn_v")
    plan: dict[str, TypeChoice] = {}
    default_bs = type_facts(spec.default).block_size
    for name, shape in tensors:
        if len(shape) < 2 or not name.endswith("weight") or "_norm.weight" in name:
            plan[name] = TypeChoice(T.F32, "not quantized (1-D, norm or not a weight)")
            continue
        cols = int(shape[-1])
        cat = _category(name)
        if type_facts(spec.default).is_float:
            plan[name] = TypeChoice(spec.default, f"{key} keeps 2-D weights in {spec.default.name}")
            continue
        qtype, reason = spec.default, f"{key} default"
        if cat == "output" or (tied and cat == "token_embd"):
            what = "output" if cat == "output" else "tied token_embd"
            if cols % default_bs:
                qtype, reason = T.Q8_0, f"{what}: row size {cols} not a multiple of {default_bs}"
            elif spec.default is not T.Q8_0:
                qtype, reason = T.Q6_K, f"{what} in Q6_K"
        elif cat in ("attn_v", "ffn_down", "attn_k", "attn_output", "attn_qkv"):
            m = _LAYER.match(name)
            i = int(m.group(1)) if m else 0
            n = n_attn_v if cat == "attn_v" else n_layer
            up = _upgrade(key, cat, i, n, n_gqa, n_expert, has_imatrix)
            if up is not None:
                qtype, reason = up
        qtype, note = _fallback(qtype, cols)
        plan[name] = TypeChoice(qtype, reason + note)
    return plan


def format_plan(plan: dict[str, TypeChoice]) -> str:
    """One line per tensor: name, type, reason; then a count per type."""
    width = max((len(n) for n in plan), default=10)
    lines = [f"{n:{width}s}  {c}" for n, c in plan.items()]
    counts: dict[str, int] = {}
    for c in plan.values():
        counts[c.qtype.name] = counts.get(c.qtype.name, 0) + 1
    lines.append("types: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
