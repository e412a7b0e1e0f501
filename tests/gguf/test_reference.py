"""Bit-exactness against the reference quantizers: gguf-py (q4_0 ... q8_0) and llama.cpp's ggml (all types).

llama.cpp's own quantizer is reached through ctypes (``ggml_quantize_chunk`` in llama-cpp-python's
``libggml-base``, the code ``llama_model_quantize`` runs), so every type can be compared with and
without an importance matrix, on random and real weights, block by block.
"""

import gguf
import pytest
import torch

from signround.quant.gguf import GGMLType, quantize_tensor

from .gguf_testlib import KQUANTS, LEGACY, assert_blocks_equal, ggml_quantize, real_weight, test_weights



@pytest.mark.parametrize("name", LEGACY)
def test_legacy_bytes_equal_gguf_py(name):
    for w in (test_weights(), test_weights(rows=7, cols=96, seed=5) * 30):
        ours = quantize_tensor(w, name).to_bytes().numpy()
        theirs = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType[name])
        assert_blocks_equal(ours, theirs, GGMLType[name])


@pytest.mark.model
@pytest.mark.parametrize("name", LEGACY)
def test_legacy_bytes_equal_gguf_py_on_real_weights(name):
    w = real_weight("model.layers.5.self_attn.o_proj.weight")
    ours = quantize_tensor(w, name).to_bytes().numpy()
    theirs = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType[name])
    assert_blocks_equal(ours, theirs, GGMLType[name])


@pytest.mark.interop
@pytest.mark.parametrize("name", LEGACY + KQUANTS)
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
def test_bytes_equal_llama_cpp(name, with_imatrix):
    w = test_weights()
    imatrix = torch.rand(w.shape[1], generator=torch.Generator().manual_seed(1)) ** 3 if with_imatrix else None
    ours = quantize_tensor(w, name, imatrix=imatrix).to_bytes().numpy()
    assert_blocks_equal(ours, ggml_quantize(w, GGMLType[name], imatrix), GGMLType[name])


@pytest.mark.interop
@pytest.mark.model
@pytest.mark.parametrize("name", LEGACY + KQUANTS)
def test_bytes_equal_llama_cpp_on_real_weights(name):
    # ffn_down rows are 1536 wide: a multiple of 256, so every type applies.
    w = real_weight("model.layers.3.mlp.down_proj.weight")[:192]
    imatrix = torch.rand(w.shape[1], generator=torch.Generator().manual_seed(2)) ** 2
    for im in (None, imatrix):
        ours = quantize_tensor(w, name, imatrix=im).to_bytes().numpy()
        assert_blocks_equal(ours, ggml_quantize(w, GGMLType[name], im), GGMLType[name])
