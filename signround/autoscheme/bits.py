"""Bit accounting of AutoScheme: what one Linear costs under one option (AutoRound reference §8).

Integer, FP and MX/NV options follow AutoRound's ``compute_layer_bits``: ``bits*numel`` plus, per
group, a scale (8 bits for MX/NV/FP4 scales, 16 otherwise) and a zero point of ``bits`` bits when the
scheme is asym or integer (so full-range sym int pays for one too: W4A16 g128 = 4.156 bpw; NVFP4's
per-tensor global scale is not counted: 4.5 bpw). ``group_size`` -1 is one group per output row, 0 one
per tensor.

GGUF types are counted by their real block bytes (``TypeFacts.bits_per_weight``, the values of
gguf-py's ``GGML_QUANT_SIZES``): this is the exact llama.cpp file size. AutoRound estimates k-quants
as ``bits*numel + n_group*super_bits*2 + n_super*64``, which charges 32-bit super-scales where ggml
stores float16 ``d``/``dmin`` and ignores Q6_K's int8 sub-scales: Q4_K 4.625 (real 4.5), Q2_K 2.75
(real 2.625). A layer whose rows do not fit the type's block is counted in llama.cpp's fallback type.

Float layers (BF16) cost 16 bits per weight. AutoRound counts a 16-bit layer as 32 bits only when
its scheme carries GGUF super-block fields (its own TODO in ``compute_layer_bits``); a plain BF16
option is 16 there too, and here always.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..formats.gguf_mixes import _fallback
from ..quant.gguf.types import type_facts
from ..schemes import QuantScheme, gguf_scheme

__all__ = ["layer_bits", "effective_scheme", "scale_bits", "FLOAT_BITS", "LayerShape"]

FLOAT_BITS = 16
_SMALL_SCALE_TYPES = ("mx_fp", "mx_fp_rceil", "mx_int", "nv_fp")  # E8M0 / E4M3 scales: 8 bits


@dataclass(frozen=True)
class LayerShape:
    """(out_features, in_features) of one Linear."""

    out: int
    inp: int

    @property
    def numel(self) -> int:
        return self.out * self.inp


def scale_bits(scheme: QuantScheme) -> int:
    """Bits of one group scale: 8 for MX/NV (and any 4-bit float element type), 16 otherwise (reference §8)."""
    if scheme.data_type in _SMALL_SCALE_TYPES or (scheme.data_type == "fp" and scheme.bits == 4):
        return 8
    return 16


def effective_scheme(scheme: QuantScheme, shape: tuple[int, int]) -> QuantScheme:
    """The scheme a layer of this shape really gets: a GGUF type whose block does not divide the row
    falls back as llama.cpp does (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, ...; float when nothing fits)."""
    if scheme.data_type != "gguf":
        return scheme
    qtype, _ = _fallback(type_facts(scheme.ggml_type).qtype, shape[1])
    if type_facts(qtype).is_float:
        from ..schemes import KEEP

        return KEEP
    return gguf_scheme(qtype.name)


def layer_bits(scheme: QuantScheme, shape: tuple[int, int], ignore_scale_zp_bits: bool = False) -> int:
    """Total bits of a (out, in) weight stored under ``scheme`` (an integer: the knapsack's unit)."""
    out, inp = shape
    numel = out * inp
    scheme = effective_scheme(scheme, shape)
    if not scheme.is_quantized:
        return FLOAT_BITS * numel
    if ignore_scale_zp_bits:
        return scheme.bits * numel
    if scheme.data_type == "gguf":
        facts = type_facts(scheme.ggml_type)
        return out * (inp // facts.block_size) * facts.type_size * 8
    gs = scheme.group_size
    if gs > 0:
        n_group = out * math.ceil(inp / gs) if scheme.group_rows == 1 else \
            math.ceil(out / scheme.group_rows) * math.ceil(inp / gs)
    elif gs == 0:
        n_group = 1
    else:
        n_group = out
    zp = scheme.bits if (not scheme.sym or scheme.data_type == "int") else 0
    return scheme.bits * numel + n_group * (scale_bits(scheme) + zp)
