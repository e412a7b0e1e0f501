"""Units of allocation: the layers that must share one option, merged with union-find.

Three reasons join layers (within one decoder block): the architecture's fused groups (q/k/v,
gate/up) when a requested format fuses them at serving time, the user's ``shared_layers`` (names or
regexes matched against the names inside the block), and all routed MoE experts of a block.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable, Sequence

__all__ = ["build_units", "local_match"]

logger = logging.getLogger(__name__)

_REGEX = re.compile(r"[\^\$\|\(\)\[\]\?\+\*\\]")


def local_match(pattern: str, local: str) -> bool:
    """A name inside a block matches a pattern equal to it, ending in ``.pattern``, or (a regex) found in it."""
    if local == pattern or local.endswith("." + pattern):
        return True
    return bool(_REGEX.search(pattern)) and re.search(pattern, local) is not None


def _routed_expert(local: str) -> bool:
    return ".experts." in f".{local}" and "shared_expert" not in local


def build_units(names: Sequence[str], blocks_prefix: str, fused_groups: Iterable[Sequence[str]] = (),
                shared_layers: Iterable[Sequence[str]] = (), group_experts: bool = True) -> list[tuple[str, ...]]:
    """Partition ``names`` (the candidate layers, in order) into units; each unit lists its layers in order."""
    parent = {n: n for n in names}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(members: list[str]) -> None:
        for m in members[1:]:
            a, b = find(members[0]), find(m)
            if a != b:
                parent[b] = a

    block_re = re.compile(rf"^{re.escape(blocks_prefix)}\.(\d+)\.(.+)$")
    by_block: dict[str, dict[str, str]] = {}  # block prefix -> local name -> full name
    for n in names:
        m = block_re.match(n)
        if m:
            by_block.setdefault(m.group(1), {})[m.group(2)] = n
    fused_groups, shared_layers = list(fused_groups), list(shared_layers)
    used: set[int] = set()
    for local in by_block.values():
        for group in fused_groups:
            union([local[g] for g in group if g in local])
        for gi, group in enumerate(shared_layers):
            members = [full for loc, full in local.items() if any(local_match(p, loc) for p in group)]
            if members:
                used.add(gi)
            union(members)
        if group_experts:
            union([full for loc, full in local.items() if _routed_expert(loc)])
    for gi, group in enumerate(shared_layers):
        if gi not in used:
            logger.warning("shared_layers group %s matches no candidate layer in any block", list(group))
    units: dict[str, list[str]] = {}
    for n in names:
        units.setdefault(find(n), []).append(n)
    return [tuple(v) for v in units.values()]
