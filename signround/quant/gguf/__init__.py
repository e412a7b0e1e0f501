"""GGML/GGUF numerics: the llama.cpp block types, their scale searches, rounding and exact block packers.

Pure tensor functions (torch, CPU or GPU); the GGUF file writer lives in ``signround.export.gguf``.
References: llama.cpp ``ggml/src/ggml-quants.c`` and ``ggml-common.h``; gguf-py ``gguf/quants.py``.
"""

from .api import (
    GGUFQuantized,
    check_shape,
    decode_tensor,
    dequantize_tensor,
    encode_tensor,
    fake_quantize,
    quantize_tensor,
    requantize,
    unpack_tensor,
)
from .formats import BlockFormat, BlockParams, GGMLFormat, SearchMode, search_mode
from .types import GGMLType, TypeFacts, format_of, parse_type, registered_types, type_facts

__all__ = [
    "GGMLType",
    "TypeFacts",
    "SearchMode",
    "search_mode",
    "BlockParams",
    "BlockFormat",
    "GGMLFormat",
    "GGUFQuantized",
    "format_of",
    "type_facts",
    "parse_type",
    "registered_types",
    "check_shape",
    "quantize_tensor",
    "requantize",
    "fake_quantize",
    "dequantize_tensor",
    "encode_tensor",
    "decode_tensor",
    "unpack_tensor",
]
