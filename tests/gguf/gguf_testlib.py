"""Helpers for the GGUF tests: llama.cpp's own quantizer through ctypes, and block-level comparisons."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import torch

from signround.quant.gguf import GGMLType, type_facts

__all__ = ["LEGACY", "KQUANTS", "QUANT", "test_weights", "ggml_lib", "ggml_quantize", "assert_blocks_equal", "block_diff_report", "real_weight"]


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
