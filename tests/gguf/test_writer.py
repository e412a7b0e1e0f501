"""The GGUF writer: metadata, names, arch quirks, supplied tensors, atomic writes, early errors."""

import json
import os

import gguf
import numpy as np
import pytest
import torch

from signround.export.gguf import GGUFModelWriter, export_gguf, load_gguf_state_dict, read_gguf_tensors, write_gguf
from signround.formats.gguf_arch import qk_row_permutation
from signround.formats.gguf_tensors import gguf_plan, model_tensors
from signround.quant.gguf import GGMLType, quantize_tensor, requantize
from signround.testing import tiny_model

from .gguf_testlib import tiny_arch_model, tiny_spm_tokenizer, tiny_tokenizer

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _fields(path):
    r = gguf.GGUFReader(os.fspath(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def test_llama_permutation_matches_the_converter():
    w = torch.arange(4 * 16 * 3, dtype=torch.float32).reshape(64, 3)
    n_head = 4
    # llama.cpp convert: reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(shape)
    expected = w.reshape(n_head, 2, 64 // n_head // 2, 3).transpose(1, 2).reshape(64, 3)
    assert torch.equal(w[qk_row_permutation(64, n_head)], expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_tensor_has_a_gguf_name(arch):
    names = [s.gguf_name for s in model_tensors(tiny_arch_model(arch))]
    assert "token_embd.weight" in names and "blk.1.ffn_down.weight" in names
    assert len(names) == len(set(names))


def test_unknown_architecture_fails_before_any_work(tmp_path, tok):
    out = tmp_path / "gpt2.gguf"
    with pytest.raises(ValueError, match="does not know architecture 'gpt2'; known: llama, mistral"):
        export_gguf(tiny_model("gpt2"), tok, out, "q4_0")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("mix", ["q4_0", "q4_k_m", "q6_k", "bf16"])
def test_file_round_trip_is_exact(tmp_path, tok, mix):
    """What our reader decodes from the file is exactly our dequantization of each planned type."""
    model = tiny_arch_model("llama")
    path = export_gguf(model, tok, tmp_path / "m.gguf", mix)
    state = load_gguf_state_dict(path, model)
    plan = gguf_plan(model, mix)
    for src in model_tensors(model):
        qtype = plan[src.gguf_name].qtype
        if qtype in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
            expected = src.tensor.float().to({GGMLType.F32: torch.float32, GGMLType.F16: torch.float16,
                                              GGMLType.BF16: torch.bfloat16}[qtype]).float()
        else:
            expected = quantize_tensor(src.tensor, qtype).dequantize()
        assert torch.equal(state[src.hf_name], expected), (src.hf_name, qtype)


def test_metadata(tmp_path, tok):
    model = tiny_arch_model("llama")
    path = export_gguf(model, tok, tmp_path / "m.gguf", "q4_k_m")
    f = _fields(path)
    assert f["general.architecture"] == "llama"
    assert f["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert (f["llama.block_count"], f["llama.embedding_length"], f["llama.feed_forward_length"]) == (2, 256, 512)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (4, 2)
    assert f["llama.rope.dimension_count"] == 64
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert len(f["tokenizer.ggml.tokens"]) == 512
    assert f["tokenizer.ggml.tokens"][400] == "[PAD400]"
    assert f["tokenizer.ggml.token_type"][:3] == [int(gguf.TokenType.CONTROL)] * 3
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert f["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.padding_token_id"]) == (1, 2, 0)
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.chat_template"] == tok.chat_template


def test_gemma_norms_are_stored_plus_one(tmp_path, tok):
    model = tiny_arch_model("gemma3_text")
    path = export_gguf(model, tok, tmp_path / "g.gguf", "q8_0")
    stored = read_gguf_tensors(path)
    w = model.model.layers[0].input_layernorm.weight.detach()
    assert np.array_equal(stored["blk.0.attn_norm.weight"][2], (w + 1.0).numpy())
    f = _fields(path)
    assert f["gemma3.attention.sliding_window"] == 8
    assert f["gemma3.attention.sliding_window_pattern"] == [True, False]


def test_supplied_quantized_tensors_are_written_as_given(tmp_path, tok):
    """A tuned tensor (codes from round(w / s + v)) lands in the file bit for bit, permuted like llama.cpp."""
    model = tiny_arch_model("llama")
    name = "model.layers.0.self_attn.q_proj.weight"
    w = model.state_dict()[name]
    base = quantize_tensor(w, "q4_k")
    tuned = requantize(w, base, (torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.8)
    assert not torch.equal(tuned.codes, base.codes)
    plan = {n: c.qtype for n, c in gguf_plan(model, "q4_k_m").items()}
    path = write_gguf(model, tok, tmp_path / "t.gguf", plan, {name: tuned}, file_type=int(gguf.LlamaFileType.MOSTLY_Q4_K_M))
    assert torch.equal(load_gguf_state_dict(path, model)[name], tuned.dequantize())
    raw = read_gguf_tensors(path)["blk.0.attn_q.weight"][2]
    assert np.array_equal(raw, tuned.select_rows(qk_row_permutation(256, 4)).to_bytes().numpy())


def test_supplied_tensor_must_match_the_plan(tmp_path, tok):
    model = tiny_arch_model("llama")
    name = "model.layers.0.mlp.down_proj.weight"
    plan = {n: c.qtype for n, c in gguf_plan(model, "q4_k_m").items()}
    wrong = quantize_tensor(model.state_dict()[name], "q5_0")
    with pytest.raises(ValueError, match=r"Q5_0 \(256, 512\), but the plan says Q4_K \(256, 512\) for blk.0.ffn_down.weight"):
        write_gguf(model, tok, tmp_path / "x.gguf", plan, {name: wrong}, file_type=15)
    with pytest.raises(ValueError, match="no tensor type given"):
        write_gguf(model, tok, tmp_path / "x.gguf", {}, file_type=15)
    assert not any(tmp_path.iterdir())


def test_writer_states(tmp_path, tok):
    w = GGUFModelWriter(tiny_arch_model("llama"), tok, {}, file_type=0)
    with pytest.raises(RuntimeError, match="expected state tensors_ready, got created"):
        w.write(tmp_path / "x.gguf")


def test_failed_write_leaves_nothing(tmp_path, tok, monkeypatch):
    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tiny_arch_model("llama"), tok, tmp_path / "m.gguf", "q8_0")
    assert list(tmp_path.iterdir()) == []


def test_unknown_mix(tmp_path, tok):
    with pytest.raises(ValueError, match="valid: q4_0, q4_1, q5_0"):
        export_gguf(tiny_arch_model("llama"), tok, tmp_path / "m.gguf", "q4_k_xl")


def test_spm_style_vocab(tmp_path):
    """Byte-fallback BPE is written as llama.cpp's "llama" (SentencePiece) vocab with BYTE tokens and
    scores that order merges by rank."""
    spm = tiny_spm_tokenizer()
    f = _fields(export_gguf(tiny_arch_model("mistral"), spm, tmp_path / "s.gguf", "q8_0"))
    assert f["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.pre" not in f
    types, scores, tokens = f["tokenizer.ggml.token_type"], f["tokenizer.ggml.scores"], f["tokenizer.ggml.tokens"]
    assert types[0] == int(gguf.TokenType.UNKNOWN) and types[1] == types[2] == int(gguf.TokenType.CONTROL)
    assert tokens[3] == "<0x00>" and set(types[3:259]) == {int(gguf.TokenType.BYTE)}
    merges = json.loads(spm.backend_tokenizer.to_str())["model"]["merges"]
    first = "".join(merges[0]) if isinstance(merges[0], list) else merges[0].replace(" ", "")
    assert scores[tokens.index(first)] == -1.0
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_space_prefix"] is True
