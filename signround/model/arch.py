"""Per-architecture facts, in one table: where the decoder blocks live, what is fused at serving time.

Every quirk an architecture has is a field here, not an ``if model_type == ...`` elsewhere.
Architectures not in the table fall back to discovery (the largest ``nn.ModuleList`` of blocks)
with a log line saying so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

__all__ = ["ArchFacts", "ARCHITECTURES", "arch_facts", "get_module", "tied_embeddings", "max_positions"]

logger = logging.getLogger(__name__)

_LLAMA_FUSED = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("mlp.gate_proj", "mlp.up_proj"),
)


@dataclass(frozen=True)
class ArchFacts:
    """Where things are in one model family (dotted paths from the CausalLM root)."""

    blocks: str
    embeddings: tuple[str, ...]
    final_norm: str
    lm_head: str = "lm_head"
    fused_groups: tuple[tuple[str, ...], ...] = _LLAMA_FUSED  # names relative to a block
    conv1d_weights: bool = False  # GPT-2 stores Linear weights transposed (transformers Conv1D)
    routers: tuple[str, ...] = ("mlp.gate",)  # MoE routers (only skipped when experts exist)


_LLAMA_LIKE = ArchFacts(blocks="model.layers", embeddings=("model.embed_tokens",), final_norm="model.norm")

ARCHITECTURES: dict[str, ArchFacts] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "qwen2_moe": _LLAMA_LIKE,
    "qwen3_moe": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": ArchFacts(
        blocks="model.layers",
        embeddings=("model.embed_tokens",),
        final_norm="model.norm",
        fused_groups=(),  # q/k/v and gate/up are already single Linears (qkv_proj, gate_up_proj)
    ),
    "opt": ArchFacts(
        blocks="model.decoder.layers",
        embeddings=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
        final_norm="model.decoder.final_layer_norm",
        fused_groups=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),),
    ),
    "gpt2": ArchFacts(
        blocks="transformer.h",
        embeddings=("transformer.wte", "transformer.wpe"),
        final_norm="transformer.ln_f",
        fused_groups=(),
        conv1d_weights=True,
    ),
    "gpt_neox": ArchFacts(
        blocks="gpt_neox.layers",
        embeddings=("gpt_neox.embed_in",),
        final_norm="gpt_neox.final_layer_norm",
        lm_head="embed_out",
        fused_groups=(),
    ),
}


def get_module(root: torch.nn.Module, dotted: str) -> torch.nn.Module:
    try:
        return root.get_submodule(dotted)
    except AttributeError as e:
        raise ValueError(f"model {type(root).__name__} has no module {dotted!r}") from e


def _discover(model: torch.nn.Module) -> ArchFacts:
    best_name, best_len = None, 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > best_len:
            best_name, best_len = name, len(mod)
    if best_name is None:
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: no nn.ModuleList in the model")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_name = next((n for n, m in model.named_modules() if m is head), "lm_head") if head is not None else "lm_head"
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    emb_name = next((n for n, m in model.named_modules() if m is emb), "") if emb is not None else ""
    return ArchFacts(blocks=best_name, embeddings=(emb_name,) if emb_name else (), final_norm="", lm_head=head_name, fused_groups=())


def arch_facts(model: torch.nn.Module) -> ArchFacts:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    facts = ARCHITECTURES.get(model_type or "")
    if facts is None:
        facts = _discover(model)
        logger.warning(
            "architecture %r is not in signround's table; discovered blocks at %r (%d) and lm_head %r",
            model_type, facts.blocks, len(get_module(model, facts.blocks)), facts.lm_head,
        )
    return facts


def tied_embeddings(model: torch.nn.Module) -> bool:
    """Whether the model's lm_head shares its weight with the input embeddings (stored once, quantized never)."""
    return bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")  # Llama-likes and OPT; GPT-2


def max_positions(model: torch.nn.Module) -> int | None:
    """How many token positions the model has (calibration rows may not be longer), or None if unknown."""
    config = getattr(model, "config", None)
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
