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
- Floating-point and microscaling data types (AutoRound reference §4) are rows of ``DATA_TYPES``:
  their bits and group sizes are that table's facts. ``group_rows > 1`` makes 2-D blocks
  (``FP8_BLOCK``: 128 x 128). FP elements carry their sign, so these schemes are always ``sym``.
- Activations: ``act_bits < 16`` quantizes each Linear's input on the fly (``act_dynamic``: a scale
  per token / group from the current input) or with a calibrated per-tensor maximum (static).
  ``act_group_size``, ``act_sym`` and ``act_data_type`` left as None follow the weight's
  (reference §2.13); ``to_dict`` records the resolved values.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from .formats.gguf_mixes import MIXES
from .quant.gguf.types import format_of, parse_type

__all__ = ["QuantScheme", "DATA_TYPES", "DataType", "PRESETS", "PRESET_ALIASES", "GGUF_PRESETS", "resolve_scheme", "preset_names", "gguf_scheme",
           "gguf_preset_mix", "gguf_type_names", "KEEP"]

logger = logging.getLogger(__name__)

INT_BITS = range(2, 9)


@dataclass(frozen=True)
class DataType:
    """Facts of one element data type (one row of ``DATA_TYPES``)."""

    description: str
    bits: tuple[int, ...]
    group_sizes: tuple[int, ...] = ()  # () = any: -1, 0 or a power of two
    float_elements: bool = False  # elements carry their own sign: always sym, no zero point
    activations: bool = True  # can quantize activations too


# One table: every quantized data type a scheme can name (besides "gguf", whose facts are per ggml type).
DATA_TYPES: dict[str, DataType] = {
    "int": DataType("integer codes, a scale (and zero point) per group", tuple(INT_BITS)),
    "mx_fp": DataType("OCP MX float: E2M1 (4 bits) / E4M3 (8 bits) elements, a power-of-two E8M0 scale per 32 "
                      "(floor: the group max may saturate)", (4, 8), (32,), float_elements=True),
    "mx_fp_rceil": DataType("OCP MX float with the E8M0 scale rounded up (rceil: nothing saturates)", (4, 8), (32,),
                            float_elements=True),
    "mx_int": DataType("OCP MX int: sign-magnitude integer elements (1.2 fixed point for 4 bits), E8M0 scale per 32",
                       (4, 8), (32,), float_elements=True),
    "nv_fp": DataType("NVFP4: E2M1 elements, an FP8 E4M3 scale per 16 under one fp32 global scale per tensor",
                      (4,), (16,), float_elements=True),
    "fp": DataType("FP8 E4M3 elements, an fp32 scale per tensor (0), channel (-1), group, or 2-D block", (8,),
                   float_elements=True),
}
FLOAT = "float"  # data type of a layer (or activation) kept in high precision


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
    group_rows: int = 1  # rows per group: > 1 makes (group_rows x group_size) blocks (FP8_BLOCK)
    act_group_size: int | None = None  # None: the weight's group_size; -1 per token, 0 per tensor
    act_sym: bool | None = None  # None: the weight's
    act_dynamic: bool = True  # False: a calibrated (static) scale
    act_data_type: str | None = None  # None: the weight's data type when act_bits < 16

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise TypeError(f"bits must be an int, got {self.bits!r}")
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool):
            raise TypeError(f"group_size must be an int, got {self.group_size!r}")
        if self.data_type not in (*DATA_TYPES, "gguf", FLOAT):
            raise ValueError(f"data_type must be one of {', '.join((*DATA_TYPES, 'gguf'))} (or 'float' for 16-bit "
                             f"layers), got {self.data_type!r}")
        if self.data_type == "gguf":
            _check_gguf(self)
        elif self.ggml_type:
            raise ValueError(f"ggml_type {self.ggml_type!r} is only meaningful with data_type 'gguf', got {self.data_type!r}")
        elif self.is_quantized:
            _check_elements("", self.data_type, self.bits, self.group_size, self.sym)
        if not isinstance(self.group_rows, int) or self.group_rows < 1:
            raise ValueError(f"group_rows must be a positive int, got {self.group_rows!r}")
        if self.group_rows > 1 and (self.data_type != "fp" or self.group_size <= 0):
            raise ValueError(f"2-D blocks (group_rows={self.group_rows}) need data_type 'fp' (FP8) and a positive "
                             f"group_size, got data_type {self.data_type!r}, group_size {self.group_size}")
        if self.quantizes_activations:
            _check_activations(self)

    @property
    def quantizes_activations(self) -> bool:
        return self.act_bits < 16

    @property
    def act_group(self) -> int:
        """The resolved activation group size (-1: per token, 0: per tensor)."""
        return self.group_size if self.act_group_size is None else self.act_group_size

    @property
    def act_symmetric(self) -> bool:
        return self.sym if self.act_sym is None else self.act_sym

    @property
    def act_dtype(self) -> str:
        """The resolved activation data type ("float" when activations stay in high precision)."""
        if not self.quantizes_activations:
            return FLOAT
        if self.act_data_type is not None:
            return self.act_data_type
        return self.data_type if self.data_type in DATA_TYPES else "int"

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
        g = _group_name(self.group_size) + (f"x{self.group_rows}" if self.group_rows > 1 else "")
        if self.data_type == "int":
            name = f"w{self.bits}g{g}" + ("" if self.sym else "_asym")
        else:
            name = _DTYPE_SHORT[self.data_type] + str(self.bits) + ("" if self.group_size in _DEFAULT_GROUP.get(
                self.data_type, ()) else f"g{g}")
        if self.quantizes_activations:
            act = self.act_dtype
            name += f"_a{self.act_bits}" + ("" if act == self.data_type else _DTYPE_SHORT[act])
            name += "" if self.act_dynamic else "s"
        return name

    def describe(self) -> tuple[str, str]:
        """(weights, activations) in words, for ``signround list scheme`` and the plan."""
        if self.data_type == "gguf":
            return f"ggml {self.ggml_type}", "16-bit"
        if not self.is_quantized:
            return "kept in 16-bit float", "16-bit"
        w = f"{_DTYPE_WORDS[self.data_type]}{self.bits}, {_group_words(self.group_size, self.group_rows, 'channel')}"
        if self.data_type == "int":
            w += ", full-range sym" if self.sym else ", asym"
        if not self.quantizes_activations:
            return w, "16-bit"
        a = f"{_DTYPE_WORDS[self.act_dtype]}{self.act_bits}, {_group_words(self.act_group, 1, 'token')}, "
        a += ("sym, " if self.act_symmetric else "asym, ") if self.act_dtype == "int" else ""
        if self.act_dtype == "nv_fp" and not self.act_dynamic:
            return w, a + "global scale static (calibrated max), FP8 scales per input"
        return w, a + ("dynamic" if self.act_dynamic else "static (calibrated max)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.quantizes_activations:  # record what the run used, not "follow the weight's"
            d.update(act_group_size=self.act_group, act_sym=self.act_symmetric, act_data_type=self.act_dtype)
        return d


_DTYPE_SHORT = {"int": "int", "mx_fp": "mxfp", "mx_fp_rceil": "mxfpr", "mx_int": "mxint", "nv_fp": "nvfp", "fp": "fp"}
_DTYPE_WORDS = {"int": "int", "mx_fp": "MXFP", "mx_fp_rceil": "MXFP (rceil)", "mx_int": "MXINT", "nv_fp": "NVFP",
                "fp": "FP"}
_DEFAULT_GROUP = {k: v.group_sizes for k, v in DATA_TYPES.items()}


def _group_name(group_size: int) -> str:
    return {-1: "c", 0: "t"}.get(group_size, str(group_size))


def _group_words(group_size: int, rows: int, per_row: str) -> str:
    if group_size == -1:
        return f"per {per_row}"
    if group_size == 0:
        return "per tensor"
    return f"blocks {rows}x{group_size}" if rows > 1 else f"group {group_size}"


def _check_elements(what: str, data_type: str, bits: int, group_size: int, sym: bool) -> None:
    """``what`` ("" for weights, "act_" for activations) names the fields in the message."""
    facts = DATA_TYPES[data_type]
    if bits not in facts.bits:
        allowed = "2..8" if data_type == "int" else ", ".join(map(str, facts.bits))
        keep = " (or 16 to keep a layer in high precision)" if not what else ""
        raise ValueError(f"{what}data_type {data_type} takes {what}bits {allowed}{keep}, got {bits}")
    if facts.group_sizes and group_size not in facts.group_sizes:
        raise ValueError(f"{what}data_type {data_type} needs {what}group_size "
                         f"{' or '.join(map(str, facts.group_sizes))} (what its scale format and the kernels that "
                         f"read it assume), got {group_size}")
    if group_size not in (-1, 0) and not _is_power_of_two(group_size):
        raise ValueError(f"{what}group_size must be -1 (per {'token' if what else 'channel'}), 0 (per tensor) or a "
                         f"positive power of two, got {group_size}")
    if facts.float_elements and not sym:
        raise ValueError(f"{what}data_type {data_type} has signed elements and no zero point: it is always sym, "
                         f"got {what}sym False")


def _check_activations(s: "QuantScheme") -> None:
    dtype = s.act_dtype
    if dtype not in DATA_TYPES:
        raise ValueError(f"act_data_type must be one of {', '.join(DATA_TYPES)}, got {dtype!r}")
    _check_elements("act_", dtype, s.act_bits, s.act_group, s.act_symmetric)
    if not s.act_dynamic and dtype.startswith("mx_"):
        raise ValueError(f"act_data_type {dtype} computes its E8M0 scales from each input: it cannot be static "
                         f"(act_dynamic False)")
    if not s.act_dynamic and dtype in ("int", "fp") and s.act_group != 0:
        raise ValueError(f"static activations (act_dynamic False) use one calibrated scale per tensor: "
                         f"act_group_size must be 0, got {s.act_group}")


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
    "MXFP4": QuantScheme(bits=4, group_size=32, data_type="mx_fp", act_bits=4),
    "MXFP4_RCEIL": QuantScheme(bits=4, group_size=32, data_type="mx_fp", act_bits=4, act_data_type="mx_fp_rceil"),
    "MXFP8": QuantScheme(bits=8, group_size=32, data_type="mx_fp", act_bits=8),
    "MXFP8_RCEIL": QuantScheme(bits=8, group_size=32, data_type="mx_fp", act_bits=8, act_data_type="mx_fp_rceil"),
    "MXINT4": QuantScheme(bits=4, group_size=32, data_type="mx_int", act_bits=4),
    # NVFP4 activations: the per-tensor global scale is calibrated (static), the FP8 per-16 scales are per input.
    "NVFP4": QuantScheme(bits=4, group_size=16, data_type="nv_fp", act_bits=4, act_dynamic=False),
    "FPW8A16": QuantScheme(bits=8, group_size=0, data_type="fp"),
    "FP8_STATIC": QuantScheme(bits=8, group_size=-1, data_type="fp", act_bits=8, act_group_size=0, act_dynamic=False),
    "FP8_BLOCK": QuantScheme(bits=8, group_size=128, group_rows=128, data_type="fp", act_bits=8),
    # llm-compressor's FP8_DYNAMIC (what vLLM's CPU build serves among the FP8 schemes): inputs per token, dynamic.
    "FP8_DYNAMIC": QuantScheme(bits=8, group_size=-1, data_type="fp", act_bits=8, act_group_size=-1),
    "INT8_W8A8": QuantScheme(bits=8, group_size=-1, act_bits=8),
    "BF16": KEEP,
    **{name: gguf_scheme(MIXES[mix].default.name) for name, mix in GGUF_PRESETS.items()},
}

PRESET_ALIASES: dict[str, str] = {"INT8": "INT8_W8A8"}  # AutoRound's name for the same preset

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
        key = PRESET_ALIASES.get(key, key)
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
    if changes.get("data_type", resolved.data_type) in DATA_TYPES and resolved.data_type == FLOAT:
        changes.setdefault("group_size", QuantScheme().group_size)  # BF16 + bits=4 becomes the W4A16 default again
    if changes.get("data_type") in DATA_TYPES and DATA_TYPES[changes["data_type"]].float_elements:
        changes.setdefault("sym", True)  # FP elements are signed: "asym" is no choice to carry over
        facts = DATA_TYPES[changes["data_type"]]
        if "group_size" not in changes and facts.group_sizes and resolved.group_size not in facts.group_sizes:
            changes["group_size"] = facts.group_sizes[0]  # data_type=mx_fp on W4A16: its group 32, not 128
        if "bits" not in changes and resolved.bits not in facts.bits:
            changes["bits"] = facts.bits[0]
    return resolved.replace(**changes) if changes else resolved
