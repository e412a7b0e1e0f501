"""The weightless skeleton: filled block by block from a checkpoint it equals the loaded model bit for bit."""

import copy
import gc
import time
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

from signround.errors import BadInputError
from signround.model.skeleton import build_skeleton, check_source_covers, is_materialized, materialize, release
from signround.model.weights import ModuleSource, SafetensorsSource

ARCHS = ["llama", "gemma3_text", "gpt2"]  # untied; tied with an embedding scale buffer; tied Conv1D layers


def _tie_groups(model):
    groups = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return sorted(groups.values())


def _blocks(model) -> list[str]:
    """Submodule names to fill one at a time: every child of the base model, then the head."""
    base_name = model.base_model_prefix
    base = getattr(model, base_name)
    names = []
    for child, mod in base.named_children():
        if isinstance(mod, torch.nn.ModuleList):
            names += [f"{base_name}.{child}.{i}" for i in range(len(mod))]
        else:
            names.append(f"{base_name}.{child}")
    return names + ["lm_head"]


@pytest.fixture
def saved(tiny, tmp_path):
    """Factory: (folder, original model) for an architecture, saved in several small shards."""

    def make(arch, dtype=torch.float32, shard="100KB"):
        model = tiny(arch, dtype=dtype)
        folder = tmp_path / f"{arch}-{str(dtype)[6:]}"
        model.save_pretrained(folder, max_shard_size=shard)
        return folder, model

    return make


def _ids():
    return torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))


def _raises(fn, *parts):
    with pytest.raises(BadInputError) as err:
        fn()
    for part in parts:
        assert part in str(err.value), f"{part!r} not in: {err.value}"


@pytest.mark.parametrize("arch", ARCHS)
def test_skeleton_has_no_weights_but_real_buffers_and_ties(tiny, arch):
    original = tiny(arch, dtype=torch.bfloat16)
    config = copy.deepcopy(original.config)
    skeleton = build_skeleton(original.config, torch.bfloat16)
    assert original.config.to_dict() == config.to_dict()  # the caller's config is left alone
    assert type(skeleton) is type(original) and not skeleton.training
    assert all(p.is_meta for p in skeleton.parameters())
    assert {p.dtype for p in skeleton.parameters()} == {torch.bfloat16}
    assert not is_materialized(skeleton)
    want = dict(original.named_buffers())
    for name, buf in skeleton.named_buffers():
        assert buf.device.type == "cpu", name
        assert buf.dtype == want[name].dtype and torch.equal(buf, want[name]), name  # computed as usual (rotary inv_freq...)
    assert _tie_groups(skeleton) == _tie_groups(original)


@pytest.mark.parametrize("arch", ARCHS)
def test_block_by_block_equals_the_original(saved, arch):
    folder, original = saved(arch)
    source = SafetensorsSource(folder)
    assert len({source.info(n).file for n in source.names()}) > 3  # really several shards
    skeleton = build_skeleton(original.config, torch.float32)
    assert check_source_covers(skeleton, source) == []
    blocks = _blocks(skeleton)
    for i, block in enumerate(blocks):
        materialize(skeleton, block, source)
        assert is_materialized(skeleton.get_submodule(block)), block
        for later in blocks[i + 1:-1]:  # the head may be tied to the embedding, filled with it
            assert all(p.is_meta for p in skeleton.get_submodule(later).parameters()), (block, later)
    assert is_materialized(skeleton)
    want = original.state_dict()
    got = skeleton.state_dict()
    assert got.keys() == want.keys()
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    assert _tie_groups(skeleton) == _tie_groups(original)
    with torch.no_grad():
        assert torch.equal(skeleton(_ids()).logits, original(_ids()).logits)


def test_blocks_not_asked_for_stay_empty(saved):
    folder, original = saved("llama")
    skeleton = build_skeleton(original.config, torch.float32)
    materialize(skeleton, "model.layers.1", SafetensorsSource(folder))
    assert is_materialized(skeleton.model.layers[1])
    assert all(p.is_meta for p in skeleton.model.layers[0].parameters())
    assert skeleton.model.embed_tokens.weight.is_meta and skeleton.lm_head.weight.is_meta
    with pytest.raises(ValueError, match="no submodule or parameter 'model.layers.7'"):
        materialize(skeleton, "model.layers.7", SafetensorsSource(folder))


def test_release_frees_the_block(saved):
    folder, original = saved("llama")
    skeleton = build_skeleton(original.config, torch.float32)
    source = SafetensorsSource(folder)
    materialize(skeleton, "", source)
    layer = skeleton.model.layers[0]
    refs = [weakref.ref(p) for p in layer.parameters()]
    release(skeleton, "model.layers.0")
    gc.collect()
    assert all(r() is None for r in refs)  # nothing kept a reference: the memory is freed
    assert all(p.is_meta for p in layer.parameters()) and not is_materialized(layer)
    assert [p.shape for p in layer.parameters()] == [p.shape for p in original.model.layers[0].parameters()]
    assert is_materialized(skeleton.model.layers[1]) and is_materialized(skeleton.lm_head)
    materialize(skeleton, "model.layers.0", source)  # and back again
    for name, p in layer.named_parameters():
        assert torch.equal(p, original.model.layers[0].get_parameter(name)), name


@pytest.mark.parametrize("arch", ["gemma3_text", "gpt2"])
def test_tied_embeddings_stay_tied(saved, arch):
    folder, original = saved(arch)
    source = SafetensorsSource(folder)
    assert "lm_head.weight" not in source.names()  # saved once, under the embedding's name
    skeleton = build_skeleton(original.config, torch.float32)
    emb = lambda: skeleton.get_input_embeddings().weight  # noqa: E731
    materialize(skeleton, "lm_head", source)  # read through the tied partner's name
    assert skeleton.lm_head.weight is emb() and not emb().is_meta
    assert torch.equal(emb(), original.get_input_embeddings().weight)
    release(skeleton, skeleton.base_model_prefix)
    assert skeleton.lm_head.weight is emb() and emb().is_meta
    materialize(skeleton, "", source)
    assert skeleton.lm_head.weight is emb() and not emb().is_meta
    assert _tie_groups(skeleton) == _tie_groups(original)


def test_tie_needs_only_one_name(saved):
    folder, original = saved("gpt2", shard="100MB")
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    tensors["lm_head.weight"] = tensors.pop("transformer.wte.weight")  # stored under the other name of the tie
    save_file(tensors, str(f), metadata={"format": "pt"})
    skeleton = build_skeleton(original.config, torch.float32)
    source = SafetensorsSource(folder)
    assert check_source_covers(skeleton, source) == []
    materialize(skeleton, "transformer.wte", source)
    assert skeleton.transformer.wte.weight is skeleton.lm_head.weight
    assert torch.equal(skeleton.lm_head.weight, original.lm_head.weight)


def test_bf16_checkpoint_stays_bf16(saved):
    folder, original = saved("llama", dtype=torch.bfloat16)
    source = SafetensorsSource(folder)
    assert {source.read(n).dtype for n in source.names()} == {torch.bfloat16}
    skeleton = build_skeleton(original.config, torch.bfloat16)
    materialize(skeleton, "", source)
    assert {p.dtype for p in skeleton.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert torch.equal(skeleton(_ids()).logits, original(_ids()).logits)


def test_stored_dtype_is_cast_to_the_skeletons(saved):
    folder, original = saved("llama")
    skeleton = build_skeleton(original.config, torch.bfloat16)
    materialize(skeleton, "model.layers.0", SafetensorsSource(folder))
    for name, p in skeleton.model.layers[0].named_parameters():
        assert p.dtype == torch.bfloat16 and torch.equal(p, original.model.layers[0].get_parameter(name).bfloat16())


def test_module_source_fills_without_copies(tiny):
    original = tiny("gemma3_text")
    skeleton = build_skeleton(original.config, torch.float32)
    source = ModuleSource(original)
    assert check_source_covers(skeleton, source) == []
    materialize(skeleton, "", source)
    assert skeleton.model.layers[0].mlp.up_proj.weight.data_ptr() == original.model.layers[0].mlp.up_proj.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(skeleton(_ids()).logits, original(_ids()).logits)


def test_truncated_shard(saved):
    folder, _ = saved("llama")
    shard = sorted(folder.glob("*.safetensors"))[2]
    last = [n for n in SafetensorsSource(folder).names() if SafetensorsSource(folder).info(n).file == str(shard)][-1]
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size - 4])
    _raises(lambda: SafetensorsSource(folder), f"{shard}: tensor {last} ends at byte {size} but the file has {size - 4} "
            "bytes (truncated?)")


def test_missing_tensor(saved):
    folder, original = saved("llama", shard="100MB")
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    del tensors["model.layers.1.self_attn.v_proj.weight"], tensors["model.norm.weight"]
    save_file(tensors, str(f), metadata={"format": "pt"})
    skeleton = build_skeleton(original.config, torch.float32)
    source = SafetensorsSource(folder)
    _raises(lambda: check_source_covers(skeleton, source), str(folder),
            "model.layers.1.self_attn.v_proj.weight, model.norm.weight", "(truncated or incomplete checkpoint?)",
            "it would load with random weights")
    materialize(skeleton, "model.layers.0", source)  # blocks that are whole still load
    _raises(lambda: materialize(skeleton, "model.layers.1", source), str(folder), "model.layers.1.self_attn.v_proj.weight")


def test_wrong_shape(saved):
    folder, original = saved("llama", shard="100MB")
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:200].clone()
    save_file(tensors, str(f), metadata={"format": "pt"})
    skeleton = build_skeleton(original.config, torch.float32)
    source = SafetensorsSource(folder)
    parts = (str(f), "tensor model.layers.0.mlp.up_proj.weight has shape [200, 128]", "expects [256, 128]")
    _raises(lambda: check_source_covers(skeleton, source), *parts)
    _raises(lambda: materialize(skeleton, "model.layers.0", source), *parts)


def test_unused_tensors_are_returned(saved):
    folder, original = saved("llama", shard="100MB")
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    tensors["model.layers.9.extra.weight"] = torch.ones(3)
    save_file(tensors, str(f), metadata={"format": "pt"})
    skeleton = build_skeleton(original.config, torch.float32)
    assert check_source_covers(skeleton, SafetensorsSource(folder)) == ["model.layers.9.extra.weight"]


def test_persistent_buffers_are_covered_and_loaded(tmp_path):
    """A persistent buffer (BatchNorm statistics) comes from the checkpoint; a missing one is an error."""
    from accelerate import init_empty_weights

    torch.manual_seed(0)
    real = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    real[1].running_mean.uniform_(1, 2)
    with init_empty_weights(include_buffers=False):
        skeleton = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    assert check_source_covers(skeleton, ModuleSource(real)) == []
    materialize(skeleton, "1", ModuleSource(real))
    assert torch.equal(skeleton[1].running_mean, real[1].running_mean)
    tensors = {k: v for k, v in real.state_dict().items() if k != "1.running_var"}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    _raises(lambda: check_source_covers(skeleton, SafetensorsSource(tmp_path)), "1.running_var", "random weights")


@pytest.mark.slow
def test_8b_shaped_skeleton_is_cheap():
    """An 8B-shaped Llama builds in seconds and holds no weight memory (its weights would take 16 GB)."""
    from transformers import LlamaConfig

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)
    build_skeleton(LlamaConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               vocab_size=64), torch.bfloat16)  # one-off imports and set-up outside the count
    before, start = rss_mb(), time.monotonic()
    skeleton = build_skeleton(config, torch.bfloat16)
    elapsed, grown = time.monotonic() - start, rss_mb() - before
    assert 7.9e9 < sum(p.numel() for p in skeleton.parameters()) < 8.1e9
    assert all(p.is_meta for p in skeleton.parameters())
    assert grown < 300, f"building the skeleton grew RSS by {grown:.0f} MB"
    assert elapsed < 30, f"building the skeleton took {elapsed:.1f} s"
