"""Format facts, below both the plan and the exporters: the support matrix, the llama.cpp mixes and
architectures, the HF -> GGUF tensor mapping, and the bit layouts readers and writers share.

The plan and ``schemes`` import from here to fail before calibration; ``export/`` and ``inference/``
import from here to write and read; nothing here imports them.
"""

from .support import FORMATS, Format, FormatSpec, check_group_sizes, check_layer, format_table, gguf_mix, is_gguf, parse_formats

__all__ = ["FORMATS", "Format", "FormatSpec", "check_group_sizes", "check_layer", "format_table", "gguf_mix", "is_gguf",
           "parse_formats"]
