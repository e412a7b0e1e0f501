"""Helpers for the GGUF tests: llama.cpp's own quantizer through ctypes, and block-level comparisons."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import torch

from signround.quant.gguf import GGMLType, type_facts

__all__ = [
    "LEGACY", "KQUANTS", "QUANT", "test_weights", "tiny_tokenizer", "tiny_spm_tokenizer", "tiny_arch_model", "llama_quantize", "llama_logits",
    "ggml_lib", "ggml_quantize", "assert_blocks_equal", "block_diff_report", "real_weight"]


LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
QUANT = LEGACY + KQUANTS


def test_weights(rows: int = 64, cols: int = 512, seed: int = 0) -> torch.Tensor:
    """Random weights with the awkward cases: an outlier, a dead row, a constant run, exact ties."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[0, 3] = 0.4
    w[1] = 0.0
    w[2, : min(cols, 256)] = -0.01
    w[3] = torch.round(w[3] / 0.005) * 0.005
    return w


test_weights.__test__ = False  # a helper, not a test


def ggml_lib() -> ctypes.CDLL:
    """llama-cpp-python's ``libggml-base`` (the code ``llama_model_quantize`` runs), or skip."""
    import pytest

    llama_cpp = pytest.importorskip("llama_cpp")
    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def ggml_quantize(w: torch.Tensor, qtype: GGMLType, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """(rows, cols) -> (rows, row_bytes) uint8 from ggml's ``ggml_quantize_chunk`` (llama.cpp's quantizer)."""
    lib = ggml_lib()
    x = np.ascontiguousarray(w.detach().float().numpy())
    rows, cols = x.shape
    out = np.zeros((rows, lib.ggml_row_size(int(qtype), cols)), dtype=np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix.float().numpy())
    lib.ggml_quantize_init(int(qtype))
    n = lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, cols, None if im is None else im.ctypes.data)
    assert n == out.size
    return out


def block_diff_report(ours: np.ndarray, ref: np.ndarray, qtype: GGMLType) -> tuple[int, str]:
    """(number of differing blocks, a description of the worst one by dequantized difference)."""
    import gguf

    f = type_facts(qtype)
    a = np.asarray(ours).reshape(-1, f.type_size)
    b = np.asarray(ref).reshape(-1, f.type_size)
    bad = ~(a == b).all(axis=1)
    n_bad = int(bad.sum())
    if not n_bad:
        return 0, ""
    gt = gguf.GGMLQuantizationType(int(qtype))
    da = gguf.quants.dequantize(a, gt).reshape(-1, f.block_size)
    db = gguf.quants.dequantize(b, gt).reshape(-1, f.block_size)
    delta = np.abs(da - db).max(axis=1)
    worst = int(np.argmax(np.where(bad, delta, -1)))
    first_byte = int(np.argmax(a[worst] != b[worst]))
    return n_bad, (
        f"{n_bad}/{len(a)} {qtype.name} blocks differ; worst block {worst}: max |dequant diff| {delta[worst]:.3g}, "
        f"first differing byte {first_byte} (ours {a[worst][first_byte]}, ref {b[worst][first_byte]})"
    )


def assert_blocks_equal(ours, ref, qtype: GGMLType) -> None:
    n_bad, report = block_diff_report(ours, ref, qtype)
    assert n_bad == 0, report


def real_weight(name: str) -> torch.Tensor:
    """One float32 tensor of the real SmolLM2-135M-Instruct checkpoint (skip if unavailable)."""
    import pytest
    from safetensors import safe_open

    from signround.testing import smollm2_hf_dir

    try:
        folder = smollm2_hf_dir()
    except (FileNotFoundError, OSError) as e:
        pytest.skip(f"SmolLM2 is not available: {e}")
    with safe_open(os.fspath(folder / "model.safetensors"), "pt") as f:
        return f.get_tensor(name).float()


_TEXT = [
    "The quick brown fox jumps over the lazy dog. ",
    "Numbers 12345 and symbols !?., appear here; so do tabs\tand newlines\n.",
    "Hello world, this is a tiny tokenizer for the GGUF writer tests.",
] * 20


def tiny_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style, 3 specials, a few hundred tokens) built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
    return fast


def tiny_spm_tokenizer():
    """A SentencePiece-style BPE tokenizer with byte fallback (Llama 2 / Mistral layout) built in memory:
    ``<unk> <s> </s>``, the 256 ``<0xXX>`` byte tokens, then trained pieces; adds ``<s>``."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    t.train_from_iterator(_TEXT, trainers.BpeTrainer(vocab_size=400, show_progress=False))
    j = json.loads(t.to_str())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece, _ in sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    j["model"].update(vocab=vocab, byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    j["pre_tokenizer"] = None
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    j["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    j["post_processor"] = {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(j)),
                                   bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_arch_model(arch: str, hidden: int = 256, seed: int = 0) -> torch.nn.Module:
    """A random 2-layer model of ``arch`` whose widths fit the k-quants, with non-trivial norms and biases."""
    import transformers

    base = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512, max_position_embeddings=256,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    configs = {
        "llama": lambda: transformers.LlamaConfig(**base, tie_word_embeddings=False),
        "mistral": lambda: transformers.MistralConfig(**base, tie_word_embeddings=False),
        "qwen2": lambda: transformers.Qwen2Config(**base, tie_word_embeddings=True),
        "qwen3": lambda: transformers.Qwen3Config(**base, head_dim=96, tie_word_embeddings=False),
        "gemma3_text": lambda: transformers.Gemma3TextConfig(
            **base, head_dim=64, query_pre_attn_scalar=64, sliding_window=8,
            layer_types=["sliding_attention", "full_attention"]),
    }
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(configs[arch](), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith(("q_proj.bias", "k_proj.bias")):
                p.normal_(0, 0.5)
    return model


def llama_quantize(src, dst, mix: str, imatrix: dict | None = None) -> None:
    """llama.cpp's own quantizer (``llama_model_quantize``) from a float GGUF; imatrix keyed by GGUF tensor name."""
    import pytest

    llama_cpp = pytest.importorskip("llama_cpp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix.upper()}")
    params.nthread = 1
    keep = []
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, v) in enumerate(imatrix.items()):
            a = np.ascontiguousarray(v.float().numpy())
            keep.append(a)
            arr[i].name = name.encode()
            arr[i].data = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = a.size
        arr[len(imatrix)].name = None
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    assert llama_cpp.llama_model_quantize(os.fspath(src).encode(), os.fspath(dst).encode(), params) == 0


def llama_logits(path, ids: list[int]) -> np.ndarray:
    """(len(ids), n_vocab) logits of llama.cpp for token ids (``logits_all`` + ``eval`` + ``scores``)."""
    import pytest

    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=os.fspath(path), n_ctx=256, n_batch=256, logits_all=True, n_threads=1, verbose=False)
    try:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: llm.n_tokens])
    finally:
        llm.close()
