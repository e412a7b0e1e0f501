"""The export support matrix: which schemes each format can hold, as data.

One table read by the plan (to fail before calibration), by ``signround list format`` and by the docs.
A validator returns the first mismatch as "supports X, got Y, at layer Z".

GGUF formats are one member per llama.cpp mix (``gguf:q4_k_m``): the mix decides every tensor's
ggml type (``formats/gguf_mixes.py``), so a run writes at most one GGUF format and no other format.

Below the plan and the exporters: both import this, it imports neither (QuantScheme is a type only).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    from ..schemes import QuantScheme

__all__ = ["Format", "FormatSpec", "FORMATS", "parse_formats", "check_layer", "check_group_sizes", "format_table",
           "gguf_mix", "is_gguf"]

GGUF_PREFIX = "gguf:"


class Format(str, Enum):
    """On-disk layouts (never change a value: it reaches files and command lines)."""

    FAKE = "fake"
    AUTO_ROUND = "auto_round"
    AUTO_GPTQ = "auto_gptq"
    AUTO_AWQ = "auto_awq"
    LLM_COMPRESSOR = "llm_compressor"
    GGUF_Q4_0 = "gguf:q4_0"
    GGUF_Q4_1 = "gguf:q4_1"
    GGUF_Q5_0 = "gguf:q5_0"
    GGUF_Q5_1 = "gguf:q5_1"
    GGUF_Q8_0 = "gguf:q8_0"
    GGUF_Q2_K = "gguf:q2_k"
    GGUF_Q2_K_S = "gguf:q2_k_s"
    GGUF_Q3_K_S = "gguf:q3_k_s"
    GGUF_Q3_K_M = "gguf:q3_k_m"
    GGUF_Q3_K_L = "gguf:q3_k_l"
    GGUF_Q4_K_S = "gguf:q4_k_s"
    GGUF_Q4_K_M = "gguf:q4_k_m"
    GGUF_Q5_K_S = "gguf:q5_k_s"
    GGUF_Q5_K_M = "gguf:q5_k_m"
    GGUF_Q6_K = "gguf:q6_k"
    GGUF_F16 = "gguf:f16"
    GGUF_BF16 = "gguf:bf16"
    GGUF_F32 = "gguf:f32"


def is_gguf(fmt: Format) -> bool:
    return fmt.value.startswith(GGUF_PREFIX)


def gguf_mix(fmt: Format) -> str:
    """The llama.cpp mix of a GGUF format (``Format.GGUF_Q4_K_M`` -> ``"q4_k_m"``)."""
    if not is_gguf(fmt):
        raise ValueError(f"format {fmt.value} is not a GGUF format")
    return fmt.value[len(GGUF_PREFIX):]


@dataclass(frozen=True)
class FormatSpec:
    description: str
    bits: frozenset[int]
    sym: frozenset[bool] = frozenset({True, False})
    group_size_divides_in: bool = False  # the format cannot hold a padded last group
    fuses_qkv: bool = False  # serving engines fuse q/k/v and gate/up: bits must agree inside a group
    lm_head: bool = False  # can hold a quantized lm_head
    out_multiple: int = 1  # output features must be a multiple of this
    data_types: frozenset[str] = frozenset({"int"})  # scheme data types the format stores
    outside_blocks: bool = True  # can hold quantized layers outside the decoder blocks (besides the lm_head)
    positive_group_size: bool = False  # no per-channel (-1) / per-tensor (0) groups
    one_group_size: bool = False  # one group_size for every quantized layer of the model
    rule: "Callable[[QuantScheme], str | None] | None" = None  # what the columns cannot say: the reason, or None


def _auto_round_rule(scheme: "QuantScheme") -> str | None:
    """auto-round 0.16.1's FP layouts (export/auto_round_fp.py): MXINT nibbles only, FP8 without 1 x g groups."""
    if scheme.data_type == "mx_int" and scheme.bits != 4:
        return f"it stores MXINT with 4 bits only, got {scheme.bits}"
    if scheme.data_type == "fp" and scheme.group_size > 0 and scheme.group_rows == 1:
        return (f"its FP8 layers have a scale per tensor, per channel or per 2-D block (group_rows > 1); auto-round "
                f"loads no 1 x {scheme.group_size} groups")
    return None


def _llm_compressor_rule(scheme: "QuantScheme") -> str | None:
    """The weight and input arguments compressed-tensors can express (formats/ct_layout.py)."""
    from .ct_layout import input_args, weight_args

    try:
        weight_args(scheme)
        input_args(scheme)
    except ValueError as e:
        return str(e)
    return None


FORMATS: dict[Format, FormatSpec] = {
    Format.FAKE: FormatSpec(
        "dequantized float weights, any scheme (for research and evaluation)",
        bits=frozenset(range(2, 9)),
        lm_head=True,
        data_types=frozenset({"int", "mx_fp", "mx_fp_rceil", "mx_int", "nv_fp", "fp"}),
    ),
    Format.AUTO_ROUND: FormatSpec(
        "AutoRound checkpoint (quant_method auto-round), GPTQ-style int32 packing; transformers, vLLM, SGLang. "
        "Also MXFP4/MXFP8/MXINT4 (E8M0 scales), NVFP4 and FP8 (per tensor, channel or 128x128 block) layers as "
        "auto-round 0.16.1 writes them; its CPU loader runs MXFP4, MXFP8, MXINT4, NVFP4 and FP8_STATIC",
        bits=frozenset({2, 3, 4, 8}),
        fuses_qkv=True,
        lm_head=True,
        data_types=frozenset({"int", "mx_fp", "mx_fp_rceil", "mx_int", "nv_fp", "fp"}),
        rule=_auto_round_rule,
    ),
    Format.AUTO_GPTQ: FormatSpec(
        "GPTQ v1 checkpoint (quant_method gptq); transformers+optimum+gptqmodel, vLLM",
        bits=frozenset({2, 3, 4, 8}),
        fuses_qkv=True,
        lm_head=True,
        outside_blocks=False,  # GPTQ loaders build QuantLinears only inside block_name_to_quantize (and lm_head)
    ),
    Format.AUTO_AWQ: FormatSpec(
        "AWQ GEMM checkpoint (quant_method awq); transformers+gptqmodel, vLLM",
        bits=frozenset({4}),
        group_size_divides_in=True,
        fuses_qkv=True,
        out_multiple=8,
        positive_group_size=True,
        one_group_size=True,  # quantization_config has one group_size and no per-layer overrides
    ),
    Format.LLM_COMPRESSOR: FormatSpec(
        "compressed-tensors checkpoint (quant_method compressed-tensors): pack-quantized int, float-quantized FP8, "
        "nvfp4/mxfp4-pack-quantized, mxfp8-quantized; transformers+compressed-tensors, vLLM",
        bits=frozenset({2, 3, 4, 8}),
        # asym int: compressed-tensors 0.20.1 packs zero points to (N*bits/32, G) but its transformers load path
        # expects them unpacked (N, G) and refuses the checkpoint; FP types are always sym
        sym=frozenset({True}),
        group_size_divides_in=True,  # compressed-tensors' group strategy rejects a partial last group
        fuses_qkv=True,
        lm_head=True,
        data_types=frozenset({"int", "mx_fp", "nv_fp", "fp"}),
        rule=_llm_compressor_rule,
    ),
    **{
        fmt: FormatSpec(
            f"one llama.cpp GGUF file, mix {gguf_mix(fmt)} (per-tensor ggml types as llama.cpp chooses them); "
            "llama.cpp, ollama, LM Studio",
            bits=frozenset(range(2, 9)),
            lm_head=True,
            data_types=frozenset({"gguf"}),
        )
        for fmt in Format
        if is_gguf(fmt)
    },
}


def parse_formats(spec: "str | list[str] | tuple[str, ...]") -> list[Format]:
    """``"auto_gptq,auto_round"`` -> [Format.AUTO_GPTQ, Format.AUTO_ROUND], rejecting unknown names."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Format] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        try:
            fmt = Format(name)
        except ValueError:
            if name.startswith(GGUF_PREFIX):
                valid = ", ".join(f.value for f in Format if is_gguf(f))
                raise ValueError(f"unknown GGUF type {raw.strip()!r}; valid: {valid}") from None
            known = ", ".join(f.value for f in Format)
            raise ValueError(f"unknown format {raw.strip()!r}; known formats: {known}") from None
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise ValueError("no export format given")
    gguf = [f.value for f in out if is_gguf(f)]
    if gguf and len(out) > 1:
        others = [f.value for f in out if f.value not in gguf[:1]]
        raise ValueError(
            f"format {gguf[0]} cannot be combined with {', '.join(others)} in one run: a GGUF mix decides each "
            "tensor's type itself. Run once per GGUF mix, and separately for the other formats."
        )
    return out


def check_layer(fmt: Format, scheme: QuantScheme, layer: str, shape: tuple[int, int], is_lm_head: bool = False,
                in_blocks: bool = True) -> str | None:
    """The first reason ``fmt`` cannot hold ``layer`` quantized with ``scheme``, or None.

    ``in_blocks``: the layer is inside the decoder blocks (the lm_head is not, and has its own rule).
    """
    spec = FORMATS[fmt]
    out_f, in_f = shape
    if scheme.data_type not in spec.data_types:
        return (f"format {fmt.value} stores data types {sorted(spec.data_types)}, got {scheme.data_type} "
                f"({scheme.short_name()}) at layer {layer}")
    if scheme.bits not in spec.bits:
        return f"format {fmt.value} supports bits {sorted(spec.bits)}, got {scheme.bits} at layer {layer}"
    if spec.rule is not None and (why := spec.rule(scheme)):
        return f"format {fmt.value}: {why} (at layer {layer})"
    if scheme.sym not in spec.sym:
        want = "sym" if True in spec.sym else "asym"
        return f"format {fmt.value} supports only {want}, got {'sym' if scheme.sym else 'asym'} at layer {layer}"
    if spec.positive_group_size and scheme.group_size <= 0:
        kind = "per-channel" if scheme.group_size == -1 else "per-tensor"
        return (f"format {fmt.value} needs a positive group_size, got {scheme.group_size} ({kind}) at layer {layer}; "
                f"use a group size such as 128")
    if spec.group_size_divides_in and scheme.group_size > 0 and in_f % scheme.group_size:
        return (f"format {fmt.value} needs group_size to divide in_features: in_features {in_f} is not a multiple "
                f"of group_size {scheme.group_size} at layer {layer}")
    if out_f % spec.out_multiple:
        return f"format {fmt.value} needs out_features to be a multiple of {spec.out_multiple}, got {out_f} at layer {layer}"
    if is_lm_head and not spec.lm_head:
        return f"format {fmt.value} cannot hold a quantized lm_head ({layer}); drop --quant_lm_head or use auto_round"
    if not is_lm_head and not in_blocks and not spec.outside_blocks:
        return (f"format {fmt.value} quantizes only layers inside the decoder blocks and the lm_head; layer {layer} is "
                f"outside the blocks: keep it float or use format auto_round")
    return None


def check_group_sizes(fmt: Format, schemes: Mapping[str, QuantScheme]) -> str | None:
    """The model-wide rule of ``fmt`` over every quantized layer's scheme (``{layer: scheme}``), or None."""
    if not FORMATS[fmt].one_group_size:
        return None
    sizes: dict[int, str] = {}
    for layer, scheme in schemes.items():
        sizes.setdefault(scheme.group_size, layer)
    if len(sizes) > 1:
        detail = ", ".join(f"{layer}={size}" for size, layer in sizes.items())
        return (f"format {fmt.value} has one group_size for the whole model, got {sorted(sizes)} (first layers: "
                f"{detail}); give every layer the same group_size or use format auto_round")
    return None


def format_table() -> str:
    rows = [("format", "data types", "bits", "sym/asym", "lm_head", "notes")]
    for fmt, spec in FORMATS.items():
        sym = "/".join(s for s, ok in (("sym", True in spec.sym), ("asym", False in spec.sym)) if ok)
        notes = spec.description
        if spec.group_size_divides_in:
            notes += "; group_size must divide in_features"
        rows.append((fmt.value, ",".join(sorted(spec.data_types)), ",".join(map(str, sorted(spec.bits))), sym,
                     "yes" if spec.lm_head else "no", notes))
    n = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:n], widths)) + "  " + r[n] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
