"""Architectures the GGUF writer knows, in one table: llama.cpp arch, tensor-name map, quirks, hyper-parameters.

Facts from llama.cpp's converter (``convert_hf_to_gguf.py``/``conversion/*.py``) and loader
(``src/models/*.cpp``):

- llama, mistral (llama.cpp arch ``llama``): q_proj/k_proj rows are permuted from HF's rotate-half
  RoPE layout to ggml's interleaved one (``permute_qk``);
- qwen2 (q/k/v biases), qwen3 (q/k norms, explicit head_dim): NeoX RoPE, no permutation;
- gemma3_text: every ``*norm.weight`` is stored as ``1 + w`` (Gemma3RMSNorm multiplies by
  ``1 + w``); sliding-window layers with their own RoPE base; llama.cpp scales attention by
  ``1 / sqrt(head_dim)`` (HF by ``query_pre_attn_scalar ** -0.5``: they must agree).

Tensor names come from gguf-py's ``TensorNameMap`` for the arch (HF module path -> GGUF name).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import gguf
import torch

__all__ = ["ArchSpec", "GGUF_ARCHITECTURES", "arch_spec", "qk_row_permutation", "write_hparams", "layer_count"]

logger = logging.getLogger(__name__)


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _rope_params(config: Any, kind: str = "full_attention") -> dict:
    rp = getattr(config, "rope_parameters", None) or {}
    if kind in rp and isinstance(rp[kind], dict):
        return rp[kind]
    if "rope_theta" not in rp and getattr(config, "rope_theta", None) is not None:
        return {**rp, "rope_theta": config.rope_theta}
    return rp


def layer_count(config: Any) -> int:
    return int(_get(config, "num_hidden_layers", "n_layer"))


def _common_hparams(config: Any, w: gguf.GGUFWriter) -> None:
    """The keys every decoder here has (llama.cpp's ``TextModel.set_gguf_parameters``)."""
    w.add_block_count(layer_count(config))
    w.add_context_length(int(_get(config, "max_position_embeddings", default=4096)))
    w.add_embedding_length(int(config.hidden_size))
    w.add_feed_forward_length(int(config.intermediate_size))
    w.add_head_count(int(config.num_attention_heads))
    w.add_head_count_kv(int(_get(config, "num_key_value_heads", default=config.num_attention_heads)))
    w.add_layer_norm_rms_eps(float(_get(config, "rms_norm_eps", default=1e-6)))
    rope = _rope_params(config)
    if rope.get("rope_theta") is not None:
        w.add_rope_freq_base(float(rope["rope_theta"]))
    rope_type = rope.get("rope_type", "default")
    if rope_type == "linear" and rope.get("factor"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn" and rope.get("factor"):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rope["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif rope_type not in ("default", None):
        raise ValueError(f"RoPE type {rope_type!r} is not supported by the GGUF writer (supported: default, linear, yarn)")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None:
        w.add_key_length(int(head_dim))
        w.add_value_length(int(head_dim))


def _llama_hparams(config: Any, w: gguf.GGUFWriter) -> None:
    _common_hparams(config, w)
    w.add_vocab_size(int(config.vocab_size))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    w.add_rope_dimension_count(int(head_dim))


def _gemma3_hparams(config: Any, w: gguf.GGUFWriter) -> None:
    _common_hparams(config, w)
    head_dim = int(_get(config, "head_dim", default=256))
    scalar = _get(config, "query_pre_attn_scalar", default=head_dim)
    if scalar != head_dim:
        logger.warning(
            "gemma3: query_pre_attn_scalar (%s) differs from head_dim (%d); llama.cpp scales attention by "
            "1/sqrt(head_dim), so its outputs will differ from transformers'", scalar, head_dim,
        )
    if (cap := getattr(config, "final_logit_softcapping", None)) is not None:
        w.add_final_logit_softcapping(float(cap))
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise ValueError("gemma3: attn_logit_softcapping is set, but llama.cpp's gemma3 has no attention soft-capping")
    if getattr(config, "sliding_window", None):
        w.add_sliding_window(int(config.sliding_window))
        layer_types = getattr(config, "layer_types", None)
        if layer_types:  # per-layer pattern (llama.cpp otherwise assumes every 6th layer is global)
            w.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
    swa = _rope_params(config, "sliding_attention")
    if swa.get("rope_theta") is not None:
        w.add_rope_freq_base_swa(float(swa["rope_theta"]))


def qk_row_permutation(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order that llama.cpp's converter gives q_proj/k_proj for llama-arch models.

    HF stores each head's rows as [first half of the rotary pairs, second half]; ggml wants them
    interleaved. Returns ``index`` with ``permuted = w[index]``: within a head of ``hd`` rows,
    new row ``2 i + j`` is old row ``j * hd / 2 + i``.
    """
    if n_rows % (2 * n_head):
        raise ValueError(f"q/k projection with {n_rows} rows cannot be split into {n_head} heads of even size")
    idx = torch.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2)  # (heads, half, i)
    return idx.transpose(1, 2).reshape(n_rows)  # (heads, i, half) -> rows


@dataclass(frozen=True)
class ArchSpec:
    """What the writer needs to know about one HF ``model_type``."""

    gguf_arch: gguf.MODEL_ARCH
    hparams: Callable[[Any, gguf.GGUFWriter], None]
    permute_qk: bool = False  # llama-style Q/K row permutation
    norm_offset: float = 0.0  # added to every ``*norm.weight`` (gemma: 1.0)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]


GGUF_ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(gguf.MODEL_ARCH.LLAMA, _llama_hparams, permute_qk=True, notes=("Q/K rows permuted",)),
    "mistral": ArchSpec(gguf.MODEL_ARCH.LLAMA, _llama_hparams, permute_qk=True, notes=("written as arch llama",)),
    "qwen2": ArchSpec(gguf.MODEL_ARCH.QWEN2, _common_hparams, notes=("q/k/v biases",)),
    "qwen3": ArchSpec(gguf.MODEL_ARCH.QWEN3, _common_hparams, notes=("q/k norms",)),
    "gemma3_text": ArchSpec(gguf.MODEL_ARCH.GEMMA3, _gemma3_hparams, norm_offset=1.0, notes=("norms stored as 1 + w",)),
}


def arch_spec(model_or_config: Any) -> ArchSpec:
    """The table entry of a model (or its config), or a ValueError naming the unknown ``model_type``."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"the GGUF writer does not know architecture {model_type!r}; known: {', '.join(GGUF_ARCHITECTURES)}"
        )
    return GGUF_ARCHITECTURES[model_type]


def write_hparams(spec: ArchSpec, config: Any, w: gguf.GGUFWriter) -> None:
    spec.hparams(config, w)
