"""GGUF export: llama.cpp's tensor-type mixes, the architecture table, tokenizer metadata and the file writer.

The block numerics are in ``signround.quant.gguf``; this package turns a model into one ``.gguf``.
"""

from .arch import GGUF_ARCHITECTURES, ArchSpec, arch_spec
from .export import export_gguf, gguf_plan, hf_tensor_types
from .reader import load_gguf_state_dict, read_gguf_tensors
from .mixes import MIXES, MixSpec, TypeChoice, format_plan, mix_names, mix_spec, plan_tensor_types
from .vocab import GGUFVocab, vocab_from_tokenizer
from .writer import GGUFModelWriter, TensorSource, WriterState, model_tensors, write_gguf

__all__ = [
    "GGUF_ARCHITECTURES",
    "ArchSpec",
    "arch_spec",
    "MIXES",
    "MixSpec",
    "TypeChoice",
    "mix_names",
    "mix_spec",
    "plan_tensor_types",
    "format_plan",
    "GGUFVocab",
    "vocab_from_tokenizer",
    "GGUFModelWriter",
    "TensorSource",
    "WriterState",
    "model_tensors",
    "write_gguf",
    "gguf_plan",
    "hf_tensor_types",
    "read_gguf_tensors",
    "load_gguf_state_dict",
    "export_gguf",
]
