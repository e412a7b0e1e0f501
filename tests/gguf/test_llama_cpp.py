"""Our GGUF files in the real engine: llama.cpp loads them, agrees with our dequantized model, and its
own quantizer (``llama_model_quantize`` from our float file) produces the same tensors as ours."""

import gguf
import numpy as np
import pytest
import torch

from signround.export.gguf import export_gguf, load_gguf_state_dict, read_gguf_tensors
from signround.formats.gguf_tensors import model_tensors
from signround.quant.gguf import GGMLType, decode_tensor, type_facts

from .gguf_testlib import llama_logits, llama_quantize, tiny_arch_model, tiny_spm_tokenizer, tiny_tokenizer

pytestmark = pytest.mark.interop

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text"]
TEXT = "The quick brown fox jumps over the lazy dog. Numbers 12345 and symbols appear here."


def _dequantized_copy(model, path):
    """A copy of ``model`` holding the weights our reader decodes from ``path``."""
    import copy

    q = copy.deepcopy(model)
    missing, unexpected = q.load_state_dict(load_gguf_state_dict(path, model), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)
    return q


def _compare_logits(model, path, ids):
    theirs = llama_logits(path, ids)
    with torch.no_grad():
        ours = _dequantized_copy(model, path)(torch.tensor([ids])).logits[0].numpy()
    agree = float((theirs.argmax(-1) == ours.argmax(-1)).mean())
    rel = float(np.linalg.norm(theirs - ours) / np.linalg.norm(ours))
    return agree, rel


def _file_diff(ours_path, theirs_path):
    """Per type: (tensors, identical blocks, all blocks, sum sq err ours, sum sq err theirs) vs the float source."""
    ours, theirs = read_gguf_tensors(ours_path), read_gguf_tensors(theirs_path)
    stats, wrong_type = {}, []
    for name, (qt, shape, data) in ours.items():
        qt2, _, data2 = theirs[name]
        if qt is not qt2:
            wrong_type.append(f"{name}: ours {qt.name}, llama.cpp {qt2.name}")
            continue
        f = type_facts(qt)
        a = np.ascontiguousarray(data).view(np.uint8).reshape(-1, f.type_size)
        b = np.ascontiguousarray(data2).view(np.uint8).reshape(-1, f.type_size)
        s = stats.setdefault(qt.name, [0, 0, 0])
        s[0] += 1
        s[1] += int((a == b).all(axis=1).sum())
        s[2] += len(a)
    return stats, wrong_type


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_architectures_run_in_llama_cpp(tmp_path, tok, arch):
    model = tiny_arch_model(arch)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    f32 = export_gguf(model, tok, tmp_path / "f32.gguf", "f32")
    agree, rel = _compare_logits(model, f32, ids)
    assert agree == 1.0 and rel < 5e-3, f"{arch} f32: argmax agreement {agree:.2f}, relative logit error {rel:.2e}"
    q = export_gguf(model, tok, tmp_path / "q.gguf", "q4_k_m")
    agree, rel = _compare_logits(model, q, ids)
    # llama.cpp quantizes activations to 8 bits in quantized matmuls: a small, expected difference.
    assert agree >= 0.8 and rel < 0.06, f"{arch} q4_k_m: argmax agreement {agree:.2f}, relative logit error {rel:.3f}"


@pytest.mark.parametrize("kind", ["bpe", "spm"])
def test_llama_cpp_tokenizes_like_transformers(tmp_path, tok, kind):
    import llama_cpp

    tokenizer = tok if kind == "bpe" else tiny_spm_tokenizer()
    path = export_gguf(tiny_arch_model("qwen2" if kind == "bpe" else "mistral"), tokenizer, tmp_path / "t.gguf", "q8_0")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    try:
        for text in (TEXT, "  leading spaces,\ttabs\nand 3.14159 digits \u2713 \u00fcn\u00efc\u00f6d\u00e9", "<s>special</s>"):
            add_bos = kind == "spm"
            ours = llm.tokenize(text.encode(), add_bos=add_bos, special=True)
            assert ours == tokenizer(text, add_special_tokens=add_bos)["input_ids"], text
    finally:
        llm.close()


@pytest.mark.parametrize("mix", ["q4_k_m", "q2_k_s", "q4_0"])
def test_imatrix_files_equal_llama_cpp(tmp_path, tok, mix):
    """With the same importance matrix, our tensors are llama.cpp's, byte for byte."""
    model = tiny_arch_model("llama")
    g = torch.Generator().manual_seed(0)
    by_module, by_gguf = {}, {}
    for s in model_tensors(model):
        if s.tensor.dim() == 2 and s.hf_name.endswith("proj.weight"):
            v = torch.exp(2 * torch.randn(s.tensor.shape[1], generator=g))
            by_module[s.hf_name.removesuffix(".weight")] = by_gguf[s.gguf_name] = v
    export_gguf(model, tok, tmp_path / "f32.gguf", "f32")
    ours = export_gguf(model, tok, tmp_path / "ours.gguf", mix, imatrix=by_module)
    llama_quantize(tmp_path / "f32.gguf", tmp_path / "theirs.gguf", mix, by_gguf)
    stats, wrong_type = _file_diff(ours, tmp_path / "theirs.gguf")
    assert not wrong_type, wrong_type
    assert all(same == total for _, same, total in stats.values()), stats


@pytest.mark.model
class TestSmolLM2:
    @pytest.fixture(scope="class")
    def smol(self, tmp_path_factory):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from signround.testing import smollm2_hf_dir

        folder = smollm2_hf_dir()
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        out = tmp_path_factory.mktemp("smol")
        export_gguf(model, tokenizer, out / "f32.gguf", "f32")
        export_gguf(model, tokenizer, out / "q4_k_m.gguf", "q4_k_m")
        return model, tokenizer, out

    def test_q4_k_m_equals_llama_cpp_quantizer(self, smol):
        model, _, out = smol
        llama_quantize(out / "f32.gguf", out / "llama_q4_k_m.gguf", "q4_k_m")
        stats, wrong_type = _file_diff(out / "q4_k_m.gguf", out / "llama_q4_k_m.gguf")
        assert not wrong_type, wrong_type
        for name, (n, same, total) in stats.items():
            assert same / total >= 0.99, f"{name}: {same}/{total} identical blocks in {n} tensors"
        # Same bytes -> same error; checked on the tensors anyway, as the brief's yardstick.
        ours, theirs = read_gguf_tensors(out / "q4_k_m.gguf"), read_gguf_tensors(out / "llama_q4_k_m.gguf")
        for src in model_tensors(model):
            if src.tensor.dim() < 2:
                continue
            qt, shape, a = ours[src.gguf_name]
            _, _, b = theirs[src.gguf_name]
            ref = src.tensor.float() if src.row_permutation is None else src.tensor.float()[src.row_permutation]
            da = decode_tensor(torch.from_numpy(np.array(a).view(np.uint8).reshape(shape[0], -1)), qt, shape)
            db = decode_tensor(torch.from_numpy(np.array(b).view(np.uint8).reshape(shape[0], -1)), qt, shape)
            ratio = float(((da - ref) ** 2).sum() / ((db - ref) ** 2).sum().clamp(min=1e-30))
            assert ratio <= 1.0 + 1e-6, f"{src.gguf_name} ({qt.name}): error ratio ours/llama.cpp {ratio:.4f}"

    def test_logits_in_llama_cpp(self, smol):
        model, tokenizer, out = smol
        ids = tokenizer("The capital of France is Paris. It is known for the Eiffel Tower and its food.",
                        add_special_tokens=False)["input_ids"]
        agree, rel = _compare_logits(model, out / "f32.gguf", ids)
        assert agree == 1.0 and rel < 5e-3, (agree, rel)
        agree, rel = _compare_logits(model, out / "q4_k_m.gguf", ids)
        assert agree >= 0.8 and rel < 0.1, (agree, rel)

    def test_vocab_matches_the_original_gguf(self, smol):
        """The tokenizer metadata equals what llama.cpp's converter wrote for SmolLM2 (the package's GGUF),
        except the pre-tokenizer name: the transformers tokenizer rebuilt from that GGUF lost the
        digit splitter of the original, so ``gpt-2`` is the honest name for it."""
        from signround.testing import smollm2_gguf_path

        _, _, out = smol
        orig = gguf.GGUFReader(str(smollm2_gguf_path()))
        ours = gguf.GGUFReader(str(out / "q4_k_m.gguf"))
        for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
                    "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
                    "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count"):
            assert ours.fields[key].contents() == orig.fields[key].contents(), key
        assert ours.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
