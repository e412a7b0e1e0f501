"""Which of a model's weights are in memory, and when: the one place the block loop asks.

A model opened from disk is a skeleton (parameters on the meta device) plus a ``WeightSource``; the
block loop reads a module's tensors just before it needs them (``load``) and lets them go once the
module is quantized and written (``drop``). A model handed over in memory is the same thing with
nothing to read and nothing to let go, so small and large models run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .skeleton import materialize, release
from .weights import ModuleSource, WeightSource

__all__ = ["ModelWeights", "outside_modules"]


@dataclass(frozen=True)
class ModelWeights:
    """The model's tensors: where they are read from, and whether finished modules stay in memory."""

    source: WeightSource
    streamed: bool = False  # the model is a skeleton: parameters are read per module from ``source``
    keep: bool = True  # finished modules stay in memory (the quantized model is usable afterwards)

    @classmethod
    def in_memory(cls, model: torch.nn.Module) -> "ModelWeights":
        return cls(ModuleSource(model))

    def load(self, model: torch.nn.Module, prefixes: "str | list[str]", mapped: bool = False) -> None:
        """Read the tensors of these modules (``""`` = every one still missing) from the source.

        ``mapped``: as views of the checkpoint file where it allows (the embeddings, of which the calibration
        pass touches only the rows of its tokens)."""
        if self.streamed:
            for prefix in [prefixes] if isinstance(prefixes, str) else prefixes:
                materialize(model, prefix, self.source, mapped=mapped)

    def drop(self, model: torch.nn.Module, prefixes: "str | list[str]") -> None:
        """Let these modules' tensors go (back to the meta device), unless the model is kept."""
        if self.streamed and not self.keep:
            for prefix in [prefixes] if isinstance(prefixes, str) else prefixes:
                release(model, prefix)


def outside_modules(model: torch.nn.Module, blocks_prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Modules outside the decoder blocks that hold tensors of their own (embeddings, norms, head), minus ``skip``."""
    inside = blocks_prefix + "."
    names = []
    for name, module in model.named_modules():
        if name == blocks_prefix or name.startswith(inside) or name in skip:
            continue
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        if own:
            names.append(name)
    return names
