"""GGML tensor types: one table of facts, filled by the block formats as they are declared.

The type ids are the on-disk ``ggml_type`` values (``gguf.GGMLQuantizationType``); they never
change (STYLE 16). Each block format class registers itself with ``__init_subclass__(qtype=...)``
(see ``formats.py``); a second registration of the same type is an error.

Facts per type (ggml ``type_traits``, gguf-py ``GGML_QUANT_SIZES``):

==========  =====  ==========  =====  ======  =====================================
type        block  bytes/block  group  codes   dequantized value of code ``q``
==========  =====  ==========  =====  ======  =====================================
Q4_0          32       18        32    0..15   d * (q - 8)
Q4_1          32       20        32    0..15   d * q + m
Q5_0          32       22        32    0..31   d * (q - 16)
Q5_1          32       24        32    0..31   d * q + m
Q8_0          32       34        32    0..255  d * (q - 128)        (stored as int8 q - 128)
Q2_K         256       84        16    0..3    d * sc * q - dmin * mn   (sc, mn 4-bit)
Q3_K         256      110        16    0..7    d * sc * (q - 4)         (sc 6-bit signed, -32..31)
Q4_K         256      144        32    0..15   d * sc * q - dmin * mn   (sc, mn 6-bit)
Q5_K         256      176        32    0..31   d * sc * q - dmin * mn   (sc, mn 6-bit)
Q6_K         256      210        16    0..63   d * sc * (q - 32)        (sc int8)
F32/F16/BF16   1     4/2/2        -      -     pass-through
==========  =====  ==========  =====  ======  =====================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .formats import BlockFormat

__all__ = ["GGMLType", "TypeFacts", "register_format", "format_of", "type_facts", "registered_types", "parse_type"]

logger = logging.getLogger(__name__)


class GGMLType(IntEnum):
    """On-disk ggml type ids (equal to ``gguf.GGMLQuantizationType``; never renumber)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    # 4, 5: Q4_2, Q4_3 (removed from ggml; ids stay reserved)
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30


@dataclass(frozen=True)
class TypeFacts:
    """Static facts of one ggml type."""

    qtype: GGMLType
    block_size: int  # elements per block (along a row)
    type_size: int  # bytes per block
    group_size: int  # elements sharing one (sub-)scale; equals block_size for one-scale blocks
    qmax: int  # largest unsigned code (0 for float types)
    zero: int | None  # code of value 0 for symmetric types; None for types with a min
    is_float: bool = False

    @property
    def n_groups(self) -> int:
        return self.block_size // self.group_size

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n_cols: int) -> int:
        return n_cols // self.block_size * self.type_size


_FORMATS: dict[GGMLType, "type[BlockFormat]"] = {}


def register_format(cls: "type[BlockFormat]") -> None:
    """Record a block format class under its ``facts.qtype``; each type exactly once."""
    qtype = cls.facts.qtype
    if qtype in _FORMATS:
        raise ValueError(f"GGML type {qtype.name} is registered twice: {_FORMATS[qtype].__name__} and {cls.__name__}")
    _FORMATS[qtype] = cls


def _ensure_loaded() -> None:
    # The format classes live in their own modules; importing them fills the registry.
    from . import floats, kquants, legacy  # noqa: F401


def registered_types() -> list[GGMLType]:
    _ensure_loaded()
    return sorted(_FORMATS)


def format_of(qtype: GGMLType | str) -> "type[BlockFormat]":
    """The block format class of a ggml type (by enum member or name, e.g. ``"q4_k"``)."""
    _ensure_loaded()
    qtype = parse_type(qtype)
    try:
        return _FORMATS[qtype]
    except KeyError:
        raise ValueError(
            f"GGML type {qtype.name} has no block format; registered: {', '.join(t.name for t in sorted(_FORMATS))}"
        ) from None


def type_facts(qtype: GGMLType | str) -> TypeFacts:
    return format_of(qtype).facts


def parse_type(qtype: GGMLType | str) -> GGMLType:
    """``GGMLType`` from a member, an id or a case-insensitive name (``"Q4_K"``, ``"q4_k"``)."""
    if isinstance(qtype, GGMLType):
        return qtype
    if isinstance(qtype, int):
        return GGMLType(qtype)
    key = str(qtype).strip().upper()
    if key not in GGMLType.__members__:
        raise ValueError(f"unknown GGML type {qtype!r}; known: {', '.join(GGMLType.__members__)}")
    return GGMLType[key]
