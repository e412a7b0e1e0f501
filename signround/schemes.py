"""Quantization schemes: what one layer's weights become, and the table of named presets.

A scheme is numerics only (bits, group size, symmetry, data type). Where it is applied is the plan's
business (`plan.py`), how it is written is the exporter's (`export/`).

Conventions (see AutoRound reference §2.2):
- ``group_size``: a positive power of two (groups along the input dimension), ``-1`` one group per
  output channel, ``0`` one scale for the whole tensor.
- ``sym=True`` is *full-range* symmetric: the largest-magnitude value of a group maps to
  ``-2**(bits-1)`` and the scale may be negative, so all ``2**bits`` levels are used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["QuantScheme", "PRESETS", "resolve_scheme", "preset_names", "KEEP"]

INT_BITS = range(2, 9)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


@dataclass(frozen=True)
class QuantScheme:
    """How one Linear's weight is quantized. ``bits >= 16`` means it stays in high precision."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    data_type: str = "int"
    act_bits: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise TypeError(f"bits must be an int, got {self.bits!r}")
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool):
            raise TypeError(f"group_size must be an int, got {self.group_size!r}")
        if self.data_type not in ("int", "float"):
            raise ValueError(f"data_type must be 'int' (or 'float' for 16-bit layers), got {self.data_type!r}")
        if self.is_quantized:
            if self.data_type == "int" and self.bits not in INT_BITS:
                raise ValueError(f"int bits must be in 2..8 (or 16 to keep a layer in high precision), got {self.bits}")
            if self.group_size not in (-1, 0) and not _is_power_of_two(self.group_size):
                raise ValueError(
                    f"group_size must be -1 (per channel), 0 (per tensor) or a positive power of two, got {self.group_size}"
                )
        if self.act_bits != 16:
            raise ValueError(f"activation quantization (act_bits={self.act_bits}) is not supported yet; use act_bits=16")

    @property
    def is_quantized(self) -> bool:
        return self.bits < 16

    def replace(self, **changes: Any) -> "QuantScheme":
        return dataclasses.replace(self, **changes)

    def short_name(self) -> str:
        if not self.is_quantized:
            return f"{'BF' if self.data_type == 'float' else 'W'}{self.bits}"
        g = {-1: "c", 0: "t"}.get(self.group_size, str(self.group_size))
        return f"w{self.bits}g{g}" + ("" if self.sym else "_asym")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


KEEP = QuantScheme(bits=16, group_size=0, sym=True, data_type="float")

# One table of presets. Integer weight-only schemes use full-range symmetric groups of 128
# unless the name says otherwise (AutoRound reference §2.13).
PRESETS: dict[str, QuantScheme] = {
    "W2A16": QuantScheme(bits=2, group_size=128),
    "W2A16G64": QuantScheme(bits=2, group_size=64),
    "W2A16G32": QuantScheme(bits=2, group_size=32),
    "W3A16": QuantScheme(bits=3, group_size=128),
    "W4A16": QuantScheme(bits=4, group_size=128),
    "W5A16": QuantScheme(bits=5, group_size=128),
    "W6A16": QuantScheme(bits=6, group_size=128),
    "W8A16": QuantScheme(bits=8, group_size=128),
    "BF16": KEEP,
}

_SCHEME_KEYS = {f.name for f in dataclasses.fields(QuantScheme)}


def preset_names() -> list[str]:
    return list(PRESETS)


def resolve_scheme(
    scheme: "str | QuantScheme | Mapping[str, Any]" = "W4A16",
    *,
    base: QuantScheme | None = None,
    **overrides: Any,
) -> QuantScheme:
    """Turn a preset name, a dict of scheme keys or a QuantScheme into a validated QuantScheme.

    ``overrides`` (bits, group_size, sym, ...) that are not None win over the preset. A dict may name a
    starting preset under ``"scheme"``; missing keys come from ``base`` (default: the W4A16 defaults).
    """
    if isinstance(scheme, QuantScheme):
        resolved = scheme
    elif isinstance(scheme, str):
        key = scheme.strip().upper()
        if key not in PRESETS:
            raise ValueError(f"unknown scheme {scheme!r}; known presets: {', '.join(PRESETS)}")
        resolved = PRESETS[key]
    elif isinstance(scheme, Mapping):
        values = dict(scheme)
        start = values.pop("scheme", None)
        resolved = resolve_scheme(start) if start is not None else (base or QuantScheme())
        unknown = set(values) - _SCHEME_KEYS
        if unknown:
            raise ValueError(f"unknown scheme keys {sorted(unknown)}; allowed: {sorted(_SCHEME_KEYS | {'scheme'})}")
        overrides = {**values, **{k: v for k, v in overrides.items() if v is not None}}
    else:
        raise TypeError(f"scheme must be a preset name, a dict or a QuantScheme, got {type(scheme).__name__}")
    unknown = set(overrides) - _SCHEME_KEYS
    if unknown:
        raise ValueError(f"unknown scheme keys {sorted(unknown)}; allowed: {sorted(_SCHEME_KEYS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes.get("bits", resolved.bits) >= 16 and "data_type" not in changes:
        changes["data_type"] = "float"
    return resolved.replace(**changes) if changes else resolved
