"""Capture what each decoder block receives, and run one block on cached inputs.

Calibration rows are full-length and right-aligned (any padding sits at the end), so under the
causal mask a valid token never sees a pad: the blocks are run without a padding mask and pads are
excluded from the loss instead. The extra arguments a block needs (rotary embeddings, position ids,
masks of sliding-window layers) are then the same for every row; they are captured once per block
from a single-row forward and broadcast over any batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call

__all__ = ["BlockArgs", "capture_block_args", "capture_first_block_inputs", "run_block"]


class _StopForward(Exception):
    pass


@dataclass
class BlockArgs:
    """What a block receives besides its hidden states: positional extras and keyword arguments."""

    args: tuple
    kwargs: dict[str, Any]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "BlockArgs":
        def conv(v: Any) -> Any:
            if torch.is_tensor(v):
                if dtype is not None and v.is_floating_point():
                    return v.to(device=device, dtype=dtype)
                return v.to(device)
            if isinstance(v, tuple):
                return tuple(conv(x) for x in v)
            if isinstance(v, list):
                return [conv(x) for x in v]
            return v

        return BlockArgs(conv(self.args), {k: conv(v) for k, v in self.kwargs.items()})


def _hidden_from(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    if args:
        return args[0], tuple(args[1:]), dict(kwargs)
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), (), kwargs


class _StandIn(torch.nn.Module):
    """Takes a block's place for one forward: records its arguments and passes the hidden states through."""

    def __init__(self, block: torch.nn.Module, index: int, last: int, found: dict[int, "BlockArgs"]) -> None:
        super().__init__()
        self.index, self.last, self.found = index, last, found
        object.__setattr__(self, "_block", block)  # not a submodule: attribute reads only (attention_type...)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden, extra, kw = _hidden_from(args, kwargs)
        kw.pop("use_cache", None)
        self.found.setdefault(self.index, BlockArgs(extra, kw))
        if self.index == self.last:
            raise _StopForward
        return hidden


@torch.no_grad()
def capture_block_args(model: torch.nn.Module, blocks: torch.nn.ModuleList, row: torch.Tensor) -> list[BlockArgs]:
    """Run one row (1, T) through the model and keep every block's non-hidden arguments.

    The blocks themselves never run (each is replaced by a stand-in for this one forward, then put back):
    what a block receives besides its hidden states (rotary embeddings, masks) does not depend on the
    blocks before it, and a streamed model's blocks are not in memory yet. Stops at the last block.
    """
    found: dict[int, BlockArgs] = {}
    originals = list(blocks)
    try:
        for i in range(len(blocks)):
            blocks[i] = _StandIn(originals[i], i, len(blocks) - 1, found)
        model(input_ids=row, use_cache=False)
    except _StopForward:
        pass
    finally:
        for i, b in enumerate(originals):
            blocks[i] = b
    missing = [i for i in range(len(blocks)) if i not in found]
    if missing:
        raise RuntimeError(f"blocks {missing} were not called during the forward pass; cannot capture their inputs")
    return [found[i] for i in range(len(blocks))]


@torch.no_grad()
def capture_first_block_inputs(
    model: torch.nn.Module,
    first_block: torch.nn.Module,
    input_ids: torch.Tensor,
    batch_size: int,
    out_dtype: torch.dtype,
    out_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Hidden states entering the first block for every row: (N, T, H). The rest of the model never runs."""
    chunks: list[torch.Tensor] = []

    def pre(_mod, args, kwargs):
        hidden, _, _ = _hidden_from(args, kwargs)
        chunks.append(hidden.detach().to(device=out_device, dtype=out_dtype))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            try:
                model(input_ids=input_ids[start:start + batch_size], use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return torch.cat(chunks, dim=0)


def run_block(
    block: torch.nn.Module,
    hidden: torch.Tensor,
    block_args: BlockArgs,
    overrides: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Forward one block; ``overrides`` maps parameter names (e.g. ``mlp.up_proj.weight``) to substitutes."""
    if overrides:
        out = functional_call(block, overrides, (hidden, *block_args.args), block_args.kwargs, strict=False)
    else:
        out = block(hidden, *block_args.args, **block_args.kwargs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out
