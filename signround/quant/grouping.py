"""Reshape a weight matrix into quantization groups along the input dimension, and back.

A group never spans two output rows. When the group size does not divide the input width, each
row is zero-padded at the end to a whole number of groups (AutoRound reference §2.1): the last
group of every row holds fewer real values, and the padding never reaches a file.
"""

from __future__ import annotations

import torch

__all__ = ["effective_group_size", "num_groups", "to_groups", "from_groups", "expand_groups"]


def effective_group_size(group_size: int, in_features: int) -> int:
    """The number of input columns one scale covers (``-1`` and ``0`` both mean the whole row)."""
    return in_features if group_size in (-1, 0) else group_size


def num_groups(group_size: int, in_features: int) -> int:
    gs = effective_group_size(group_size, in_features)
    return -(-in_features // gs)


def to_groups(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, in) -> (out * n_groups, gs), zero-padding each row at the end."""
    out_f, in_f = weight.shape
    gs = effective_group_size(group_size, in_f)
    pad = num_groups(gs, in_f) * gs - in_f
    if pad:
        weight = torch.nn.functional.pad(weight, (0, pad))
    return weight.reshape(-1, gs)  # (out * n_groups, gs)


def from_groups(grouped: torch.Tensor, in_features: int) -> torch.Tensor:
    """(out * n_groups, gs) -> (out, in), dropping the padding."""
    gs = grouped.shape[-1]
    n_groups = -(-in_features // gs)
    return grouped.reshape(-1, n_groups * gs)[:, :in_features]  # (out, in)


def expand_groups(per_group: torch.Tensor, group_size: int, in_features: int) -> torch.Tensor:
    """(out, n_groups) -> (out, in): repeat each group's value over its columns."""
    gs = effective_group_size(group_size, in_features)
    return per_group.repeat_interleave(gs, dim=1)[:, :in_features]
