"""GGUF export: tokenizer metadata, the file writer and the pipeline's writer per mix.

The block numerics are in ``signround.quant.gguf``; the facts both the plan and this writer need
(llama.cpp mixes, architecture table, HF -> GGUF tensor names and types) are in ``signround.formats``.
"""

from .export import export_gguf
from .reader import load_gguf_state_dict, read_gguf_tensors
from .vocab import GGUFVocab, vocab_from_tokenizer
from .writer import GGUFModelWriter, WriterState, write_gguf

__all__ = [
    "GGUFVocab",
    "vocab_from_tokenizer",
    "GGUFModelWriter",
    "WriterState",
    "write_gguf",
    "read_gguf_tensors",
    "load_gguf_state_dict",
    "export_gguf",
]
