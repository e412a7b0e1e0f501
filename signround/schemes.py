"""Quantization schemes: what one layer's weights become, and the table of named presets.

A scheme is numerics only (bits, group size, symmetry, data type). Where it is applied is the plan's
business (`plan.py`), how it is written is the exporter's (`export/`).

Conventions (see AutoRound reference §2.2):
- ``group_size``: a positive power of two (groups along the input dimension), ``-1`` one group per
  output channel, ``0`` one scale for the whole tensor.
- ``sym=True`` is *full-range* symmetric: the largest-magnitude value of a group maps to
  ``-2**(bits-1)`` and the scale may be negative, so all ``2**bits`` levels are used.
- ``data_type="gguf"``: the layer is stored in one ggml block type (``ggml_type``, e.g. ``"Q4_K"``);
  bits, group size and symmetry are that type's facts, never chosen freely (``gguf_scheme``). The
  ``GGUF:<MIX>`` presets name a llama.cpp mix (AutoRound reference §5.5): the mix gives each tensor
  its own type (``formats/gguf_mixes.py``), the preset's scheme is the mix's default type.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from .formats.gguf_mixes import MIXES
from .quant.gguf.types import format_of, parse_type

__all__ = ["QuantScheme", "PRESETS", "GGUF_PRESETS", "resolve_scheme", "preset_names", "gguf_scheme",
           "gguf_preset_mix", "gguf_type_names", "KEEP"]

logger = logging.getLogger(__name__)

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
    ggml_type: str = ""  # data_type "gguf" only: the ggml block type, e.g. "Q4_K"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise TypeError(f"bits must be an int, got {self.bits!r}")
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool):
            raise TypeError(f"group_size must be an int, got {self.group_size!r}")
        if self.data_type not in ("int", "float", "gguf"):
            raise ValueError(f"data_type must be 'int', 'gguf' (or 'float' for 16-bit layers), got {self.data_type!r}")
        if self.data_type == "gguf":
            _check_gguf(self)
        elif self.ggml_type:
            raise ValueError(f"ggml_type {self.ggml_type!r} is only meaningful with data_type 'gguf', got {self.data_type!r}")
        elif self.is_quantized:
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
        if self.data_type == "gguf":
            return self.ggml_type.lower()
        if not self.is_quantized:
            return f"{'BF' if self.data_type == 'float' else 'W'}{self.bits}"
        g = {-1: "c", 0: "t"}.get(self.group_size, str(self.group_size))
        return f"w{self.bits}g{g}" + ("" if self.sym else "_asym")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def gguf_type_names() -> list[str]:
    """The quantized ggml block types a GGUF scheme can name (``Q4_0`` ... ``Q6_K``)."""
    from .quant.gguf.types import registered_types

    return [t.name for t in registered_types() if not format_of(t).facts.is_float]


def _gguf_facts(ggml_type: str) -> tuple[str, int, int, bool]:
    """(canonical name, bits, group size, sym) of a quantized ggml type, or a ValueError listing the valid ones."""
    try:
        facts = format_of(parse_type(ggml_type)).facts
    except ValueError:
        facts = None
    if facts is None or facts.is_float:
        raise ValueError(f"unknown GGUF type {ggml_type!r}; valid: {', '.join(gguf_type_names())}")
    return facts.qtype.name, (facts.qmax + 1).bit_length() - 1, facts.group_size, facts.zero is not None


def _check_gguf(s: "QuantScheme") -> None:
    name, bits, group_size, sym = _gguf_facts(s.ggml_type)
    if name != s.ggml_type or (s.bits, s.group_size, s.sym) != (bits, group_size, sym):
        raise ValueError(
            f"GGUF type {name} is bits {bits}, group_size {group_size}, {'sym' if sym else 'asym'}; got ggml_type "
            f"{s.ggml_type!r} with bits {s.bits}, group_size {s.group_size}, {'sym' if s.sym else 'asym'} "
            f"(build GGUF schemes with gguf_scheme(type))"
        )


def gguf_scheme(ggml_type: str) -> "QuantScheme":
    """The scheme of one ggml block type (``"q4_k"``, ``"Q6_K"``...), with its bits, group size and symmetry."""
    name, bits, group_size, sym = _gguf_facts(str(ggml_type).removeprefix("gguf:").removeprefix("GGUF:"))
    return QuantScheme(bits=bits, group_size=group_size, sym=sym, data_type="gguf", ggml_type=name)


KEEP = QuantScheme(bits=16, group_size=0, sym=True, data_type="float")

# GGUF presets, one per quantized llama.cpp mix (the mix table is formats/gguf_mixes.py): preset -> mix.
GGUF_PRESETS: dict[str, str] = {
    f"GGUF:{mix.upper()}": mix for mix, spec in MIXES.items() if not format_of(spec.default).facts.is_float
}

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
    **{name: gguf_scheme(MIXES[mix].default.name) for name, mix in GGUF_PRESETS.items()},
}

_SCHEME_KEYS = {f.name for f in dataclasses.fields(QuantScheme)}


def preset_names() -> list[str]:
    return list(PRESETS)


def gguf_preset_mix(scheme: Any) -> str | None:
    """The llama.cpp mix a ``GGUF:<MIX>`` preset name stands for (``"GGUF:Q4_K_M"`` -> ``"q4_k_m"``), else None."""
    if isinstance(scheme, Mapping):
        scheme = scheme.get("scheme")
    if not isinstance(scheme, str):
        return None
    return GGUF_PRESETS.get(scheme.strip().upper())


def _ignore_overrides(resolved: QuantScheme, what: str, overrides: Mapping[str, Any]) -> QuantScheme:
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        logger.warning("%s fixes bits, group size and symmetry per GGUF type: the override(s) %s are ignored",
                       what, ", ".join(f"{k}={v}" for k, v in given.items()))
    return resolved


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
        if key in PRESETS:
            resolved = PRESETS[key]
        elif key.startswith("GGUF:"):
            raise ValueError(f"unknown GGUF scheme {scheme!r}; valid: {', '.join(GGUF_PRESETS)}")
        elif key in gguf_type_names():  # a bare ggml type, e.g. a layer_config value "Q8_0"
            resolved = gguf_scheme(key)
        else:
            raise ValueError(f"unknown scheme {scheme!r}; known presets: {', '.join(PRESETS)}")
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
    if resolved.data_type == "gguf":
        return _ignore_overrides(resolved, f"GGUF scheme {scheme if isinstance(scheme, str) else resolved.ggml_type}",
                                 overrides)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes.get("bits", resolved.bits) >= 16 and "data_type" not in changes:
        changes["data_type"] = "float"
    return resolved.replace(**changes) if changes else resolved
