"""Every tensor of an HF model under its GGUF name, and the ggml type llama.cpp's mix gives each one.

The mapping the plan needs before calibration (``hf_tensor_types``: a Linear's ggml type and why)
and the writer needs to lay tensors out (``model_tensors``: GGUF name, llama q/k row permutation,
gemma norm offset). Names come from gguf-py's ``TensorNameMap`` for the arch in ``gguf_arch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import torch

from ..model.arch import tied_embeddings
from .gguf_arch import ArchSpec, arch_spec, layer_count, qk_row_permutation
from .gguf_mixes import TypeChoice, plan_tensor_types

__all__ = ["TensorSource", "model_tensors", "gguf_plan", "hf_tensor_types"]


@dataclass(frozen=True)
class TensorSource:
    """One tensor of the model as it will appear in the file."""

    hf_name: str
    gguf_name: str
    tensor: torch.Tensor  # HF layout, before the arch transforms
    row_permutation: torch.Tensor | None = None  # llama q/k: file rows = tensor rows[perm]
    add: float = 0.0  # gemma norms: stored value = tensor + add

    @property
    def gguf_shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)


def model_tensors(model: torch.nn.Module, spec: ArchSpec | None = None) -> list[TensorSource]:
    """Every tensor of ``model`` with its GGUF name; raises on a tensor the arch map does not know."""
    spec = spec or arch_spec(model)
    config = model.config
    name_map = gguf.get_tensor_name_map(spec.gguf_arch, layer_count(config))
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    tied = tied_embeddings(model)
    sources, unknown = [], []
    for hf_name, t in model.state_dict(keep_vars=False).items():
        if tied and hf_name == "lm_head.weight":
            continue
        new = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            unknown.append(hf_name)
            continue
        perm = None
        if spec.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            perm = qk_row_permutation(t.shape[0], n_head)
        elif spec.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            perm = qk_row_permutation(t.shape[0], n_kv)
        add = spec.norm_offset if hf_name.endswith("norm.weight") else 0.0
        sources.append(TensorSource(hf_name, new, t.detach(), perm, add))
    if unknown:
        raise ValueError(
            f"{len(unknown)} tensors have no GGUF name for arch {spec.arch_name}: {', '.join(unknown[:6])}"
            + (" ..." if len(unknown) > 6 else "")
        )
    return sources


def gguf_plan(model: torch.nn.Module, mix: str, has_imatrix: bool = False):
    """The per-tensor type plan ``{gguf name: TypeChoice}`` llama.cpp would make for ``model`` in ``mix``."""
    spec = arch_spec(model)
    config = model.config
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    n_expert = int(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0)
    tensors = [(s.gguf_name, s.gguf_shape) for s in model_tensors(model, spec)]
    return plan_tensor_types(tensors, mix, layer_count(config), n_head // n_kv, n_expert, has_imatrix)


def hf_tensor_types(model: torch.nn.Module, mix: str, has_imatrix: bool = False) -> dict[str, tuple[str, TypeChoice]]:
    """``{HF parameter name: (GGUF name, TypeChoice)}`` for every tensor the file of ``mix`` will hold.

    Raises (before any work) for an architecture the writer does not know, naming it.
    """
    spec = arch_spec(model)
    sources = model_tensors(model, spec)
    plan = gguf_plan(model, mix, has_imatrix)
    return {s.hf_name: (s.gguf_name, plan[s.gguf_name]) for s in sources}
