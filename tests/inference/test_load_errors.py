"""Bad checkpoints fail loudly, naming the file and the tensor; nothing half-loads."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from signround.formats import Format
from signround.inference.checkpoint import CheckpointError
from signround.inference.load import load_quantized
from tests.helpers import export_tiny, quantize_tiny


@pytest.fixture
def exported(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, iters=0)
    return export_tiny(model, plan, result, Format.AUTO_ROUND, tmp_path / "q")


def _edit_config(folder, fn):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_quantized(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_quantized(tmp_path / "missing")


def test_unknown_quant_method_and_packing_format(exported):
    _edit_config(exported, lambda c: c["quantization_config"].update(quant_method="bitsandbytes"))
    with pytest.raises(CheckpointError, match="quant_method 'bitsandbytes' is not supported"):
        load_quantized(exported)
    _edit_config(exported, lambda c: c["quantization_config"].update(quant_method="auto-round", packing_format="weird"))
    with pytest.raises(CheckpointError, match="packing_format 'weird'"):
        load_quantized(exported)


def test_truncated_safetensors_names_the_file(exported):
    f = exported / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupted"):
        load_quantized(exported)


def test_wrong_shape_names_the_tensor(exported):
    f = exported / "model.safetensors"
    tensors = load_file(str(f))
    name = "model.layers.1.mlp.up_proj.qzeros"
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model.safetensors: model.layers.1.mlp.up_proj.qzeros has shape"):
        load_quantized(exported)


def test_missing_tensor_is_an_error_not_random_weights(exported):
    f = exported / "model.safetensors"
    tensors = load_file(str(f))
    del tensors["model.layers.0.post_attention_layernorm.weight"]
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no tensor for model.layers.0.post_attention_layernorm.weight"):
        load_quantized(exported)
    tensors = load_file(str(f))
    del tensors["model.layers.0.mlp.up_proj.scales"]
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="up_proj lacks model.layers.0.mlp.up_proj.scales"):
        load_quantized(exported)


def test_output_dir_is_atomic(tiny, calib_ids, tmp_path, monkeypatch):
    from signround.export import registry

    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, iters=0)

    def broken(data, folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setitem(registry.WRITERS, Format.FAKE, broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_tiny(model, plan, result, Format.FAKE, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no directory, partial or complete, is left behind


@pytest.fixture(params=[Format.AUTO_GPTQ, Format.AUTO_AWQ])
def exported_gptq_awq(request, tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, iters=0, formats=(request.param,))
    return export_tiny(model, plan, result, request.param, tmp_path / "q")


def _edit_tensors(folder, fn):
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def test_gptq_and_awq_configs_we_cannot_read(exported_gptq_awq):
    method = json.loads((exported_gptq_awq / "config.json").read_text())["quantization_config"]["quant_method"]
    if method == "awq":
        _edit_config(exported_gptq_awq, lambda c: c["quantization_config"].update(version="gemv"))
        with pytest.raises(CheckpointError, match="config.json: AWQ version 'gemv' is not supported \\(supported: gemm\\)"):
            load_quantized(exported_gptq_awq)
        _edit_config(exported_gptq_awq, lambda c: c["quantization_config"].update(version="gemm", bits=8))
        with pytest.raises(CheckpointError, match="AWQ bits 8 is not supported"):
            load_quantized(exported_gptq_awq)
    else:
        _edit_config(exported_gptq_awq, lambda c: c["quantization_config"].update(checkpoint_format="marlin"))
        with pytest.raises(CheckpointError, match="checkpoint_format 'marlin' is not supported \\(supported: gptq, gptq_v2\\)"):
            load_quantized(exported_gptq_awq)
        _edit_config(exported_gptq_awq, lambda c: c["quantization_config"].update(checkpoint_format="gptq",
                                                                                   dynamic={"-:(unclosed": {}}))
        with pytest.raises(CheckpointError, match="dynamic key '-:\\(unclosed' is not a valid regex"):
            load_quantized(exported_gptq_awq)
        _edit_config(exported_gptq_awq, lambda c: c["quantization_config"].update(dynamic={"-:.*mlp.up_proj": {}}))
        with pytest.raises(CheckpointError, match="model.layers.0.mlp.up_proj has packed weights, but the gptq "
                                                  "quantization_config says it stays in float"):
            load_quantized(exported_gptq_awq)


def test_gptq_and_awq_tensor_shapes_are_checked(exported_gptq_awq):
    name = "model.layers.1.self_attn.o_proj"
    _edit_tensors(exported_gptq_awq, lambda t: t.update({f"{name}.qweight": t[f"{name}.qweight"][:-8].contiguous()}))
    with pytest.raises(CheckpointError, match=rf"model.safetensors: {name}.qweight (holds 64 input rows, the model expects "
                                              rf"128|has shape \(120, 16\), expected \(128, 16\))"):
        load_quantized(exported_gptq_awq)


def test_orphan_packed_tensors_are_an_error(exported_gptq_awq):
    _edit_tensors(exported_gptq_awq, lambda t: t.pop("model.layers.0.mlp.gate_proj.qweight"))
    with pytest.raises(CheckpointError, match="model.safetensors: model.layers.0.mlp.gate_proj.(qzeros|scales) has no "
                                              "matching .qweight"):
        load_quantized(exported_gptq_awq)
