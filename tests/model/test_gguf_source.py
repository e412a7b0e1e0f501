"""GGUFSource reads a .gguf one tensor at a time and gives bitwise what from_pretrained(gguf_file=) loads."""

import io
import math
import shutil
import struct

import gguf
import pytest
import torch
from safetensors import safe_open

from signround.errors import BadInputError
from signround.model.gguf_source import GGUFSource, gguf_config
from signround.testing import smollm2_gguf_path, smollm2_hf_dir
from tests.gguf.gguf_testlib import tiny_arch_model, tiny_tokenizer


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and a.shape == b.shape and torch.equal(a.view(torch.int32),
                                                                                       b.view(torch.int32))


@pytest.fixture(scope="module")
def smol():
    """SmolLM2's GGUF, with the skeleton built from the dequantized checkpoint's config (skips one slow parse)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(smollm2_hf_dir())
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return GGUFSource(smollm2_gguf_path(), skeleton), skeleton


@pytest.fixture(scope="module")
def smol_reference():
    with safe_open(str(smollm2_hf_dir() / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """Tiny GGUFs written by our exporter: qwen2 (tied embeddings, q/k/v biases, Q5_1), gemma3 (norms stored
    as w+1, k-quants), qwen3 (head_dim 96: transformers rebuilds its config wrong) and mistral (stored as llama,
    q/k rows permuted)."""
    from signround.export.gguf.export import export_gguf

    folder = tmp_path_factory.mktemp("gguf")
    tok = tiny_tokenizer()
    return {arch: export_gguf(tiny_arch_model(arch), tok, folder / f"{arch}.gguf", mix)
            for arch, mix in [("qwen2", "q5_1"), ("gemma3_text", "q4_k_m"), ("qwen3", "q8_0"), ("mistral", "q4_0")]}


@pytest.mark.model
def test_smollm2_every_tensor_is_bitwise_the_transformers_one(smol, smol_reference):
    source, _ = smol
    assert set(source.names()) == set(smol_reference)
    for name in source.names():
        got = source.read(name)
        assert _bitwise_equal(got, smol_reference[name]), name
        info = source.info(name)
        assert (info.name, info.shape, info.dtype, info.file) == (name, tuple(got.shape), torch.float32,
                                                                  str(smollm2_gguf_path()))
        assert info.nbytes == got.numel() * 4


@pytest.mark.model
def test_smollm2_names_cover_every_parameter_and_the_tied_head_reads_as_the_embedding(smol):
    source, skeleton = smol
    assert source.names() == list(dict.fromkeys(source.names()))  # no duplicates
    assert set(source.names()) == {n for n, _ in skeleton.named_parameters()}
    # the file has no output.weight: lm_head is tied, so it is not listed, but reads as the embedding
    assert "lm_head.weight" not in source.names()
    assert source.info("lm_head.weight").shape == (49152, 576)
    assert torch.equal(source.read("lm_head.weight"), source.read("model.embed_tokens.weight"))
    assert "llama" in source.describe() and "Q4_1" in source.describe()


@pytest.mark.model
def test_reading_one_tensor_dequantizes_only_that_one(smol, monkeypatch):
    source, _ = smol
    calls = []
    real = gguf.quants.dequantize

    def counting(data, qtype):
        calls.append((data.shape, qtype))
        return real(data, qtype)

    monkeypatch.setattr(gguf.quants, "dequantize", counting)
    source.read("model.layers.3.self_attn.q_proj.weight")
    assert calls == [((576, 360), gguf.GGMLQuantizationType.Q4_1)]


@pytest.mark.model
def test_copy_to_writes_the_raw_float32_bytes(smol):
    source, _ = smol
    name = "model.layers.0.self_attn.k_proj.weight"
    out = io.BytesIO()
    n = source.copy_to(name, out)
    assert n == len(out.getvalue()) == source.info(name).nbytes
    assert out.getvalue() == source.read(name).numpy().tobytes()


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text", "mistral"])
def test_other_architectures_match_from_pretrained_bitwise(tiny_files, arch):
    from transformers import AutoModelForCausalLM

    path = tiny_files[arch]
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    expected = loaded.state_dict()
    source = GGUFSource(path)  # no skeleton given: built from the file's own config
    assert set(source.names()) == {n for n, _ in loaded.named_parameters()}
    for name, want in expected.items():  # every state_dict name, tied ones included
        assert _bitwise_equal(source.read(name), want), name
        assert source.info(name).shape == tuple(want.shape)
    config, want = gguf_config(path).to_dict(), loaded.config.to_dict()
    del want["quantization_config"], want["dtype"]  # what from_pretrained records: the weights' origin, the dtype
    del config["dtype"]
    assert config == want


def test_a_file_transformers_cannot_load_is_refused_when_opened(tiny_files):
    """transformers' GGUF config leaves qwen3's head_dim at its default (128, not the file's 96), so from_pretrained
    fails with a size mismatch on this file."""
    path = tiny_files["qwen3"]
    with pytest.raises(BadInputError, match=rf"{path}: tensor blk\.0\.attn_q\.weight has shape \(384, 256\); "
                                            r"the model's model\.layers\.0\.self_attn\.q_proj\.weight is \(512, 256\)"):
        GGUFSource(path)


def test_truncated_file_names_the_file(tiny_files, tmp_path):
    whole = tiny_files["qwen2"].read_bytes()
    for keep in (len(whole) - 100, len(whole) // 2, 100):
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(whole[:keep])
        with pytest.raises(BadInputError, match=str(cut)):
            GGUFSource(cut)
    with pytest.raises(BadInputError, match=str(cut)):
        gguf_config(cut)


def test_missing_file_and_unknown_name(tiny_files, tmp_path):
    with pytest.raises(BadInputError, match="no such GGUF file"):
        GGUFSource(tmp_path / "absent.gguf")
    source = GGUFSource(tiny_files["qwen2"])
    with pytest.raises(BadInputError, match="no tensor for parameter 'model.nope.weight'"):
        source.read("model.nope.weight")


def test_nan_in_the_file_is_bad_input_naming_file_and_tensor(tiny_files, tmp_path):
    bad = tmp_path / "nan.gguf"
    shutil.copy(tiny_files["gemma3_text"], bad)
    norm = next(t for t in gguf.GGUFReader(bad).tensors if t.name == "blk.1.attn_norm.weight")
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32
    with open(bad, "r+b") as f:
        f.seek(norm.data_offset + 4 * 3)
        f.write(struct.pack("<f", math.nan))
    source = GGUFSource(bad)
    with pytest.raises(BadInputError, match=rf"{bad}.*blk\.1\.attn_norm\.weight.*NaN"):
        source.read("model.layers.1.input_layernorm.weight")
    assert torch.isfinite(source.read("model.layers.0.input_layernorm.weight")).all()


def test_a_skeleton_of_another_shape_is_refused(tiny_files):
    from transformers import AutoModelForCausalLM

    config = gguf_config(tiny_files["qwen2"])
    fields = {k: v for k, v in config.to_dict().items() if k != "layer_types"}
    with torch.device("meta"):
        bigger = AutoModelForCausalLM.from_config(type(config).from_dict({**fields, "num_hidden_layers": 3}))
    with pytest.raises(BadInputError, match=r"no tensor for model\.layers\.2\."):
        GGUFSource(tiny_files["qwen2"], bigger)
