"""A block computed in float32 while its Linear weights stay in their stored dtype.

The block loop runs every block in float32. Converting the whole block (``block.to(float32)``) doubles
a bf16 block for as long as it is being quantized: ~240 MB for a Llama-3.2-1B block, the largest
single buffer of a streamed optimised-RTN run. When nothing is tuned, the float32 block is needed for
one forward only, and the layer states can be made one at a time; so the small tensors (norms,
biases, buffers) become float32 and each Linear's weight is upcast for its own forward only, then
dropped. An upcast from bf16/fp16 to float32 is exact, so every number is the one the float32 block
gives: same activations, same importance matrices, same codes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch

__all__ = ["small_tensors_to_float32", "linears_in_float32"]


def small_tensors_to_float32(block: torch.nn.Module, keep: Mapping[str, torch.nn.Module], device) -> None:
    """Every parameter and floating buffer of ``block`` to float32 on ``device``, except ``keep``'s weights."""
    kept = {id(m.weight) for m in keep.values()}
    for p in block.parameters():
        if id(p) not in kept:
            p.data = p.data.to(device=device, dtype=torch.float32)
        else:
            p.data = p.data.to(device=device)
    for mod in block.modules():
        for name, b in mod.named_buffers(recurse=False):
            if b is not None and b.is_floating_point():
                setattr(mod, name, b.to(device=device, dtype=torch.float32))


@contextmanager
def linears_in_float32(modules: Mapping[str, torch.nn.Module]) -> Iterator[None]:
    """Within the block, each of ``modules`` computes with a float32 copy of its weight made for that call."""
    stored: dict[int, torch.Tensor] = {}

    def before(mod, args):
        stored[id(mod)] = mod.weight.data
        mod.weight.data = mod.weight.data.float()

    def after(mod, args, out):
        mod.weight.data = stored.pop(id(mod))

    handles = []
    try:
        for mod in modules.values():
            handles.append(mod.register_forward_pre_hook(before))
            handles.append(mod.register_forward_hook(after))
        yield
    finally:
        for h in handles:
            h.remove()
        for mod in modules.values():  # a forward that raised leaves its copy behind
            if id(mod) in stored:
                mod.weight.data = stored.pop(id(mod))
