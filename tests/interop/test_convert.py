"""GPTQ / AWQ -> auto_round conversion keeps every quantized value; act-order GPTQ is refused clearly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from signround.cli import main
from signround.convert import convert_to_auto_round
from signround.errors import OutputPathError
from signround.formats import Format
from signround.inference.checkpoint import CheckpointError
from signround.inference.load import load_quantized
from tests.helpers import export_tiny, logits, quantize_tiny
from tests.interop.common import assert_close, hf_logits, needs


def _codes(folder):
    model = load_quantized(folder, keep_codes=True)
    return {n: m.quantized for n, m in model.named_modules() if getattr(m, "quantized", None) is not None}


def _assert_same_values(src, dst):
    a, b = _codes(src), _codes(dst)
    assert a.keys() == b.keys() and a
    for name in a:
        for field in ("codes", "scale", "zero"):
            assert torch.equal(getattr(a[name], field), getattr(b[name], field)), f"{name}.{field}"
        assert (a[name].bits, a[name].group_size, a[name].sym) == (b[name].bits, b[name].group_size, b[name].sym)


@pytest.mark.parametrize("fmt, scheme, kw", [
    (Format.AUTO_GPTQ, dict(bits=3, group_size=32, sym=False), {}),
    (Format.AUTO_GPTQ, "W4A16", dict(quant_lm_head=True, layer_config={"mlp.down_proj": {"bits": 8},
                                                                        "model.layers.1.self_attn": {"bits": 16}})),
    (Format.AUTO_AWQ, dict(bits=4, group_size=64, sym=False), {}),
], ids=["gptq_w3_asym", "gptq_mixed", "awq_w4_asym"])
def test_our_gptq_and_awq_convert_exactly(fmt, scheme, kw, tiny, calib_ids, tmp_path):
    model = tiny("qwen2")
    plan, result = quantize_tiny(model, calib_ids, scheme, iters=0, formats=(fmt,), **kw)
    src = export_tiny(model, plan, result, fmt, tmp_path / "src")
    assert main(["convert", "--model", str(src), "--output_dir", str(tmp_path / "ar"), "-q"]) == 0
    out = tmp_path / "ar"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "auto-round"
    assert json.loads((out / "signround.json").read_text())["source_model"] == "tiny"
    _assert_same_values(src, out)
    assert torch.equal(logits(load_quantized(out), calib_ids), logits(model, calib_ids))


@pytest.mark.interop
@needs("auto_round")
@pytest.mark.parametrize("name", ["gptq_w4", "gptq_w4_asym", "awq_w4", "awq_w4_asym"])
def test_auto_round_package_outputs_convert_and_load_in_auto_round(name, autoround_outputs, tmp_path):
    src = autoround_outputs[name]
    out = convert_to_auto_round(src, tmp_path / "ar")
    _assert_same_values(src, out)
    assert (out / "tokenizer.json").is_file()
    ids = torch.randint(3, 259, (2, 32), generator=torch.Generator().manual_seed(0))
    ref = logits(load_quantized(src, dtype="float32"), ids)
    assert_close(hf_logits(out, ids)[0], ref, rel_max=0.005)  # auto-round's loader on the converted checkpoint


def _gptq_with(tmp_path, tiny, calib_ids, edit):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, dict(bits=4, group_size=32, sym=True), iters=0,
                                 formats=(Format.AUTO_GPTQ,))
    src = export_tiny(model, plan, result, Format.AUTO_GPTQ, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"]["desc_act"] = True
    (src / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    return src


def test_act_order_gptq_is_refused_naming_the_layer(tiny, calib_ids, tmp_path):
    def permute(t):
        t["model.layers.0.mlp.up_proj.g_idx"] = t["model.layers.0.mlp.up_proj.g_idx"].flip(0).contiguous()

    src = _gptq_with(tmp_path, tiny, calib_ids, permute)
    with pytest.raises(CheckpointError, match=r"model.safetensors: model.layers.0.mlp.up_proj.g_idx is not the trivial "
                                              r"i // 32: an act-order \(desc_act\) checkpoint without static groups"):
        convert_to_auto_round(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_act_order_with_static_groups_converts(tiny, calib_ids, tmp_path):
    src = _gptq_with(tmp_path, tiny, calib_ids, lambda t: None)  # desc_act true, g_idx trivial
    _assert_same_values(src, convert_to_auto_round(src, tmp_path / "out"))


def test_act_order_without_g_idx_is_refused(tiny, calib_ids, tmp_path):
    src = _gptq_with(tmp_path, tiny, calib_ids, lambda t: t.pop("model.layers.1.self_attn.o_proj.g_idx"))
    with pytest.raises(CheckpointError, match="desc_act=true .* but model.layers.1.self_attn.o_proj has no g_idx"):
        convert_to_auto_round(src, tmp_path / "out")


def test_not_a_quantized_checkpoint(tiny, tmp_path):
    tiny("llama").save_pretrained(tmp_path / "float")
    with pytest.raises(CheckpointError, match="config.json has no quantization_config: not a quantized checkpoint"):
        convert_to_auto_round(tmp_path / "float", tmp_path / "out")
    assert main(["convert", "--model", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "o")]) == 2


@pytest.fixture
def gptq_src(tiny, calib_ids, tmp_path):
    """A GPTQ checkpoint at tmp_path/P/src, next to the user's file P/other.txt."""
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, iters=0, formats=(Format.AUTO_GPTQ,))
    src = export_tiny(model, plan, result, Format.AUTO_GPTQ, tmp_path / "P" / "src")
    (tmp_path / "P" / "other.txt").write_text("mine")
    return src


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_convert_into_the_sources_parent_deletes_nothing(gptq_src, tmp_path):
    parent = tmp_path / "P"
    before = _listing(parent)
    assert main(["convert", "--model", str(gptq_src), "--output_dir", str(parent), "-q"]) == 2
    with pytest.raises(OutputPathError, match="contains the source checkpoint"):
        convert_to_auto_round(gptq_src, parent, overwrite=True)
    assert _listing(parent) == before and (parent / "other.txt").read_text() == "mine"
    with pytest.raises(OutputPathError, match="inside the source checkpoint"):
        convert_to_auto_round(gptq_src, gptq_src / "ar")
    assert _listing(parent) == before


def test_convert_onto_a_file_or_a_foreign_directory_is_refused(gptq_src, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    for target in (tmp_path / "P" / "other.txt", foreign):
        with pytest.raises(OutputPathError, match=str(target)):
            convert_to_auto_round(gptq_src, target, overwrite=True)
    assert (tmp_path / "P" / "other.txt").read_text() == "mine"
    assert _listing(foreign) == ["keep.txt"]


def test_convert_replaces_its_own_output_only_with_overwrite(gptq_src, tmp_path):
    out = convert_to_auto_round(gptq_src, tmp_path / "ar")
    (out / "extra.txt").write_text("from the first run")
    with pytest.raises(OutputPathError, match="--overwrite"):
        convert_to_auto_round(gptq_src, out)
    assert (out / "extra.txt").exists()
    convert_to_auto_round(gptq_src, out, overwrite=True)
    assert not (out / "extra.txt").exists()
    _assert_same_values(gptq_src, out)
