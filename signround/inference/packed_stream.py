"""Streamed loading: checkpoint tensors read from their shard when used, packed layers decoded one at a time.

``ShardTensors`` maps tensor names to the shard holding them (headers only) and reads a tensor on each
access, through a ``safe_open`` handle opened for that read and closed after it: the file is memory-mapped
only during the copy, so no shard stays resident. ``LazyLayers`` decodes a packed layer when asked
for it and keeps nothing, so the loader holds one layer's file tensors and codes at a time beside the
modules already built: peak RSS while loading is about the loaded model's size, not the float one's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Callable

import torch

from ..quant.types import QuantizedWeight

__all__ = ["ShardTensors", "LazyLayers"]


class ShardTensors(MutableMapping):
    """{tensor name: tensor} over safetensors shards, each value read from its file when accessed (not cached).

    Deleting a key forgets the tensor without reading it; assigning is refused (the mapping mirrors files).
    """

    def __init__(self, where: Mapping[str, str]) -> None:
        self.where = dict(where)  # every tensor's file, for messages; never shrinks
        self._names = dict.fromkeys(where)

    def __getitem__(self, name: str) -> torch.Tensor:
        from .checkpoint import _opened

        if name not in self._names:
            raise KeyError(name)
        with _opened(Path(self.where[name])) as handle:
            return handle.get_tensor(name)

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        raise TypeError("ShardTensors mirrors the checkpoint files; it cannot take new tensors")

    def __delitem__(self, name: str) -> None:
        del self._names[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def discard(self, name: str) -> None:
        """Forget ``name`` (if present) without reading it."""
        self._names.pop(name, None)


class LazyLayers(Mapping):
    """{layer name: decoded codes}, each decoded by its function when accessed (not cached)."""

    def __init__(self, decoders: dict[str, Callable[[], QuantizedWeight]], eager: Mapping[str, object]) -> None:
        self._decoders, self._eager = decoders, dict(eager)

    def __getitem__(self, name: str):
        if name in self._eager:
            return self._eager[name]
        return self._decoders[name]()

    def __iter__(self) -> Iterator[str]:
        return iter([*self._decoders, *self._eager])

    def __len__(self) -> int:
        return len(self._decoders) + len(self._eager)
