"""auto_round FP layers (MXFP4/MXFP8/MXINT4/NVFP4/FP8): hand-made codes and scales, written, decoded by an
independent decoder (plain Python bit arithmetic on the stored bytes, no signround code), read back, loaded.

The codes are random valid ``FPQuantized`` values (the FP quantizers are not needed): a wrong nibble order,
sign bit, E8M0 bias, FP8 scale dtype or scale shape changes the decoded weights, the logits or both.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from signround.export.registry import ExportInput, export_model
from signround.formats import Format
from signround.inference.checkpoint import read_checkpoint
from signround.inference.layouts import CheckpointError
from signround.inference.load import load_quantized
from signround.model.arch import arch_facts
from signround.plan import build_plan
from signround.quant.fp_types import FPQuantized
from signround.schemes import resolve_scheme
from tests.helpers import logits

PRESETS = ["MXFP4", "MXFP4_RCEIL", "MXFP8", "MXINT4", "NVFP4", "FPW8A16", "FP8_STATIC", "FP8_BLOCK", "FP8_DYNAMIC"]
FP8_MAX = 448.0


# ---- an independent decoder: the stored bytes -> float weights, written from the format's definition ----

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _fp4(n: int) -> float:
    return (-1.0 if n & 8 else 1.0) * E2M1[n & 7]


def _mxint4(n: int) -> float:
    return (-1.0 if n & 8 else 1.0) * (n & 7) / 4


def _e4m3(b: int) -> float:
    sign, exp, man = b >> 7, (b >> 3) & 15, b & 7
    assert not (exp == 15 and man == 7), "NaN code"
    mag = man / 8 * 2.0**-6 if exp == 0 else (1 + man / 8) * 2.0 ** (exp - 7)
    return -mag if sign else mag


FP4_TABLE = torch.tensor([_fp4(n) for n in range(16)], dtype=torch.float64)
MXINT4_TABLE = torch.tensor([_mxint4(n) for n in range(16)], dtype=torch.float64)
E4M3_TABLE = torch.tensor([_e4m3(b) if b not in (127, 255) else float("nan") for b in range(256)], dtype=torch.float64)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) bytes -> (N, K) nibbles, element 2k from the low nibble."""
    out = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.long)
    out[:, 0::2] = packed.long() % 16
    out[:, 1::2] = packed.long() // 16
    return out


def _expand(scale: torch.Tensor, rows: int, cols: int, shape) -> torch.Tensor:
    return scale.repeat_interleave(rows, 0)[: shape[0]].repeat_interleave(cols, 1)[:, : shape[1]]


def decode(t: dict[str, torch.Tensor], layer: str, scheme) -> torch.Tensor:
    """float64 weights of ``layer`` from its stored tensors, by the format's definition (module docstring)."""
    get = lambda k: t[f"{layer}.{k}"]  # noqa: E731
    if f"{layer}.weight_packed" in t:
        nib = _nibbles(get("weight_packed"))
        elems = (MXINT4_TABLE if scheme.data_type == "mx_int" else FP4_TABLE)[nib]
    else:
        elems = E4M3_TABLE[get("weight").view(torch.uint8).long()]
    shape = elems.shape
    if scheme.data_type == "fp":
        if scheme.group_rows > 1:
            s = _expand(get("weight_scale_inv").double(), scheme.group_rows, scheme.group_size, shape)
        else:
            s = get("weight_scale").double()
            s = s.reshape(-1, 1).expand(shape) if s.numel() in (1, shape[0]) else _expand(s, 1, scheme.group_size, shape)
        return elems * s
    if scheme.data_type == "nv_fp":
        s8 = E4M3_TABLE[get("weight_scale").view(torch.uint8).long()]
        return elems * _expand(s8, 1, 16, shape) / get("weight_global_scale").double()
    s = 2.0 ** (get("weight_scale").double() - 127)  # E8M0
    return elems * _expand(s, 1, scheme.group_size, shape)


# ---- hand-made FPQuantized ----

def _fp8_codes(shape, g):
    codes = torch.randint(0, 256, shape, generator=g, dtype=torch.int64)
    return torch.where((codes == 127) | (codes == 255), torch.zeros_like(codes), codes).to(torch.uint8)


def random_fp(shape: tuple[int, int], scheme, g: torch.Generator) -> FPQuantized:
    out_f, in_f = shape
    dt, bits, gs = scheme.data_type, scheme.bits, scheme.group_size
    if dt == "fp":
        rows = scheme.group_rows if scheme.group_rows > 1 else (out_f if gs == 0 else 1)
        cols = in_f if gs in (0, -1) else gs
        n_s = (-(-out_f // rows), -(-in_f // cols))
        scale = torch.rand(n_s, generator=g) * 1e-3 + 1e-5
        return FPQuantized(_fp8_codes(shape, g), scale, "fp", 8, cols, rows)
    n_s = (out_f, in_f // gs)
    if dt == "nv_fp":
        scale = (torch.rand(n_s, generator=g) * 300 + 0.01).to(torch.float8_e4m3fn).float()
        return FPQuantized(torch.randint(0, 16, shape, generator=g, dtype=torch.uint8), scale, "nv_fp", 4, gs, 1,
                           torch.tensor(1234.5678))
    scale = 2.0 ** torch.randint(-12, 3, n_s, generator=g).float()
    if dt == "mx_int":
        q = torch.randint(-7, 8, shape, generator=g)
        return FPQuantized((q & 15).to(torch.uint8), scale, dt, 4, gs)
    codes = _fp8_codes(shape, g) if bits == 8 else torch.randint(0, 16, shape, generator=g, dtype=torch.uint8)
    return FPQuantized(codes, scale, dt, bits, gs)


def export_fp(model, scheme, folder, seed=0, act_max=None, **plan_kw):
    """A plan for ``scheme`` and random FP codes for each of its layers, exported to ``folder``."""
    plan = build_plan(model, arch_facts(model), resolve_scheme(scheme), formats=[Format.AUTO_ROUND], **plan_kw)
    g = torch.Generator().manual_seed(seed)
    weights = {p.name: random_fp(p.shape, p.scheme, g) for p in plan.quantized()}
    if act_max is None:
        act_max = {p.name: torch.tensor(0.5 + i) for i, p in enumerate(plan.quantized())}
    data = ExportInput(model, None, plan, weights, source="tiny", act_max=act_max)
    return plan, weights, export_model(data, Format.AUTO_ROUND, folder)


def weights_only(model):
    """``model`` without forward pre-hooks (a loader that quantizes layer inputs adds them): weights compared alone."""
    for m in model.modules():
        m._forward_pre_hooks.clear()
    return model


def _with_weights(model, weights):
    """``model`` with each quantized layer's weight replaced by its dequantized codes (the loader's reference)."""
    for name, qw in weights.items():
        model.get_submodule(name).weight.data = qw.dequantize(torch.float32)
    return model


# ---- tests ----

def test_fp4_nibble_order_and_e8m0_bytes_on_a_hand_made_row(tiny, tmp_path):
    model = tiny("llama")
    plan, weights, out = export_fp(model, "MXFP4", tmp_path / "q")
    name = "model.layers.0.self_attn.q_proj"
    codes = torch.zeros(weights[name].shape, dtype=torch.uint8)
    codes[0, :4] = torch.tensor([0x1, 0x2, 0xA, 0xF])  # 0.5, 1.0, -1.0, -6.0
    scale = torch.ones_like(weights[name].scale)
    scale[0, 0], scale[0, 1] = 0.25, 8.0
    weights[name] = FPQuantized(codes, scale, "mx_fp", 4, 32)
    export_model(ExportInput(model, None, plan, weights), Format.AUTO_ROUND, tmp_path / "r")
    t = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert t[f"{name}.weight_packed"][0, :2].tolist() == [0x21, 0xFA]  # element 2k in the low nibble
    assert t[f"{name}.weight_scale"][0, :3].tolist() == [125, 130, 127]  # exponent + 127
    w = decode(t, name, plan.layers[name].scheme)
    assert w[0, :4].tolist() == [0.125, 0.25, -0.25, -1.5]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_layout_decodes_independently_to_the_codes_weights(preset, tiny, tmp_path):
    model = tiny("llama")
    plan, weights, out = export_fp(model, preset, tmp_path / "q")
    t = load_file(str(out / "model.safetensors"))
    for name, qw in weights.items():
        got = decode(t, name, plan.layers[name].scheme)
        want = qw.dequantize(torch.float32).double()
        assert torch.allclose(got, want, rtol=1e-6, atol=0), f"{preset} {name}: max diff {(got - want).abs().max()}"
    # the dtypes and shapes auto-round's loaders allocate (module docstring of export/auto_round_fp.py)
    q = "model.layers.0.mlp.down_proj"  # (128, 256)
    scheme = plan.layers[q].scheme
    if scheme.data_type in ("mx_fp", "mx_fp_rceil", "mx_int"):
        key = "weight" if scheme.bits == 8 else "weight_packed"
        assert (t[f"{q}.{key}"].dtype, tuple(t[f"{q}.{key}"].shape)) == \
            ((torch.float8_e4m3fn, (128, 256)) if scheme.bits == 8 else (torch.uint8, (128, 128)))
        assert (t[f"{q}.weight_scale"].dtype, tuple(t[f"{q}.weight_scale"].shape)) == (torch.uint8, (128, 8))
    elif scheme.data_type == "nv_fp":
        assert (t[f"{q}.weight_packed"].dtype, tuple(t[f"{q}.weight_packed"].shape)) == (torch.uint8, (128, 128))
        assert (t[f"{q}.weight_scale"].dtype, tuple(t[f"{q}.weight_scale"].shape)) == (torch.float8_e4m3fn, (128, 16))
        assert (t[f"{q}.weight_global_scale"].dtype, tuple(t[f"{q}.weight_global_scale"].shape)) == (torch.float32, (1,))
        assert tuple(t[f"{q}.input_global_scale"].shape) == (1,)
    else:
        assert t[f"{q}.weight"].dtype == torch.float8_e4m3fn
        want = {"FPW8A16": ("weight_scale", (1,)), "FP8_STATIC": ("weight_scale", (128,)),
                "FP8_BLOCK": ("weight_scale_inv", (1, 2)), "FP8_DYNAMIC": ("weight_scale", (128,))}[preset]
        assert tuple(t[f"{q}.{want[0]}"].shape) == want[1]
        assert ("input_scale" in {k.rsplit(".", 1)[1] for k in t if k.startswith(q)}) == (preset == "FP8_STATIC")


EXPECTED_CONFIG = {
    "MXFP4": dict(packing_format="auto_round:llm_compressor", data_type="mx_fp", bits=4, group_size=32, act_bits=4,
                  act_data_type="mx_fp", act_group_size=32, act_dynamic=True, act_sym=True),
    "MXFP4_RCEIL": dict(packing_format="auto_round:llm_compressor", data_type="mx_fp", act_data_type="mx_fp_rceil"),
    "MXFP8": dict(packing_format="auto_round:llm_compressor", data_type="mx_fp", bits=8, act_bits=8),
    "MXINT4": dict(packing_format="auto_round", data_type="mx_int", bits=4, act_data_type="mx_int"),
    "NVFP4": dict(packing_format="auto_round:llm_compressor", data_type="nv_fp", group_size=16, act_bits=4,
                  act_data_type="nv_fp4_with_static_gs", act_dynamic=True, act_group_size=16),
    "FPW8A16": dict(packing_format="auto_round:fp8", data_type="fp", bits=8, group_size=0, act_bits=16, fmt="e4m3",
                    activation_scheme="dynamic"),
    "FP8_STATIC": dict(packing_format="auto_round:fp8_static", data_type="fp", group_size=-1, act_bits=8,
                       act_group_size=0, act_data_type="fp", act_dynamic=False, activation_scheme="static"),
    "FP8_BLOCK": dict(packing_format="auto_round:fp8", group_size=[128, 128], weight_block_size=[128, 128],
                      act_group_size=128, act_dynamic=True, activation_scheme="dynamic"),
    "FP8_DYNAMIC": dict(packing_format="auto_round:fp8", data_type="fp", group_size=-1, act_bits=8, act_group_size=-1,
                        act_data_type="fp", act_dynamic=True, activation_scheme="dynamic"),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_quantization_config_keys_are_auto_rounds(preset, tiny, tmp_path):
    _, _, out = export_fp(tiny("llama"), preset, tmp_path / "q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "auto-round" and qc["sym"] is True
    assert {k: qc.get(k) for k in EXPECTED_CONFIG[preset]} == EXPECTED_CONFIG[preset]
    assert "extra_config" not in qc  # every layer has the global scheme


@pytest.mark.parametrize("preset", PRESETS)
def test_round_trip_codes_scales_and_activation_scales(preset, tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan, weights, out = export_fp(model, preset, tmp_path / "q")
    ckpt = read_checkpoint(out)
    assert ckpt.layout.value == "auto_round_fp" and set(ckpt.layers) == set(weights)
    for name, qw in weights.items():
        back = ckpt.layers[name]
        assert isinstance(back, FPQuantized) and (back.data_type, back.bits) == (qw.data_type, qw.bits), name
        assert torch.equal(back.codes, qw.codes), name
        assert torch.equal(back.dequantize(), qw.dequantize()), name
        scheme = plan.layers[name].scheme
        if scheme.quantizes_activations:
            assert ckpt.act_schemes[name].to_dict() == scheme.to_dict(), name
        else:
            assert name not in ckpt.act_schemes
    static = {"FP8_STATIC", "NVFP4"}
    assert set(ckpt.act_max) == (set(weights) if preset in static else set())
    for i, p in enumerate(plan.quantized()):
        if preset in static:
            assert torch.allclose(ckpt.act_max[p.name], torch.tensor(0.5 + i), rtol=1e-6), p.name
    loaded = weights_only(load_quantized(out))
    for name, qw in weights.items():
        assert torch.equal(loaded.get_submodule(name).weight, qw.dequantize(torch.float32)), name
    assert torch.equal(logits(loaded, calib_ids), logits(_with_weights(model, weights), calib_ids))


def test_input_scales_are_act_max_over_448_and_448x6_over_act_max(tiny, tmp_path):
    name = "model.layers.1.mlp.gate_proj"
    _, _, out = export_fp(tiny("llama"), "FP8_STATIC", tmp_path / "f", act_max={n: torch.tensor(2.24) for n in [
        f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                            "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                            "mlp.down_proj")]})
    assert load_file(str(out / "model.safetensors"))[f"{name}.input_scale"].tolist() == [pytest.approx(2.24 / 448)]
    model = tiny("llama")
    plan = build_plan(model, arch_facts(model), resolve_scheme("NVFP4"), formats=[Format.AUTO_ROUND])
    _, _, out = export_fp(model, "NVFP4", tmp_path / "n", act_max={p.name: torch.tensor(3.0) for p in plan.quantized()})
    assert load_file(str(out / "model.safetensors"))[f"{name}.input_global_scale"].tolist() == \
        [pytest.approx(448 * 6 / 3.0)]


def test_static_activations_without_act_max_fail_naming_the_layer(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj quantizes its inputs with a static"):
        export_fp(tiny("llama"), "FP8_STATIC", tmp_path / "q", act_max={})


def test_mixed_fp_default_with_int_and_float_layers(tiny, calib_ids, tmp_path):
    """MXFP4 blocks, an int8 lm_head, one float layer: per-layer keys in extra_config, every layer read back."""
    model = tiny("llama")
    plan = build_plan(model, arch_facts(model), resolve_scheme("MXFP4"), formats=[Format.AUTO_ROUND],
                      quant_lm_head=True, layer_config={"lm_head": "W8A16", "model.layers.1.mlp.down_proj": "BF16"})
    g = torch.Generator().manual_seed(0)
    weights = {p.name: random_fp(p.shape, p.scheme, g) for p in plan.quantized() if p.scheme.data_type != "int"}
    weights["lm_head"] = _int_codes(model, plan.layers["lm_head"].scheme)
    out = export_model(ExportInput(model, None, plan, weights), Format.AUTO_ROUND, tmp_path / "q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["packing_format"] == "auto_round:llm_compressor"
    assert qc["extra_config"]["lm_head"] == dict(bits=8, group_size=128, sym=True, data_type="int", act_bits=16)
    assert qc["extra_config"]["model.layers.1.mlp.down_proj"] == dict(bits=16, data_type="float", act_bits=16)
    ckpt = read_checkpoint(out)
    assert ckpt.layout.value == "gptq_raw_zero"  # int layers beside FP ones: raw zero points
    assert set(ckpt.layers) == set(weights) and set(ckpt.act_schemes) == set(weights) - {"lm_head"}
    assert torch.equal(ckpt.layers["lm_head"].codes, weights["lm_head"].codes)
    loaded = weights_only(load_quantized(out))
    assert torch.equal(logits(loaded, calib_ids), logits(_with_weights(model, weights), calib_ids))


def _int_codes(model, scheme):
    from signround.quant.types import QuantizedWeight

    w = model.get_submodule("lm_head").weight.detach()
    g = torch.Generator().manual_seed(1)
    n_g = w.shape[1] // scheme.group_size
    return QuantizedWeight(codes=torch.randint(0, 256, w.shape, generator=g, dtype=torch.uint8),
                           scale=(torch.rand(w.shape[0], n_g, generator=g) * 1e-3 + 1e-4).half().float(),
                           zero=torch.full((w.shape[0], n_g), 128, dtype=torch.uint8), bits=8,
                           group_size=scheme.group_size, sym=True)


def test_an_nvfp4_layer_in_an_int_checkpoint(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan = build_plan(model, arch_facts(model), resolve_scheme("W4A16"), formats=[Format.AUTO_ROUND],
                      layer_config={"model.layers.0.mlp.down_proj": "NVFP4"})
    g = torch.Generator().manual_seed(0)
    weights = {}
    for p in plan.quantized():
        if p.scheme.data_type == "nv_fp":
            weights[p.name] = random_fp(p.shape, p.scheme, g)
        else:
            n_g = p.shape[1] // 128
            from signround.quant.types import QuantizedWeight
            weights[p.name] = QuantizedWeight(torch.randint(0, 16, p.shape, generator=g, dtype=torch.uint8),
                                              (torch.rand(p.shape[0], n_g, generator=g) * 1e-2 + 1e-3).half().float(),
                                              torch.full((p.shape[0], n_g), 8, dtype=torch.uint8), 4, 128, True)
    out = export_model(ExportInput(model, None, plan, weights, act_max={"model.layers.0.mlp.down_proj": torch.tensor(4.0)}),
                       Format.AUTO_ROUND, tmp_path / "q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["packing_format"] == "auto_round:auto_gptq" and qc["data_type"] == "int" and qc["act_bits"] == 16
    assert qc["extra_config"]["model.layers.0.mlp.down_proj"]["act_data_type"] == "nv_fp4_with_static_gs"
    ckpt = read_checkpoint(out)
    assert ckpt.layout.value == "gptq"
    assert isinstance(ckpt.layers["model.layers.0.mlp.down_proj"], FPQuantized)
    assert torch.allclose(ckpt.act_max["model.layers.0.mlp.down_proj"], torch.tensor(4.0), rtol=1e-6)
    loaded = weights_only(load_quantized(out))
    assert torch.equal(logits(loaded, calib_ids), logits(_with_weights(model, weights), calib_ids))


@pytest.fixture
def mxfp4_export(tiny, tmp_path):
    return export_fp(tiny("llama"), "MXFP4", tmp_path / "q")[2]


def _edit(folder, fn):
    f = folder / "model.safetensors"
    t = load_file(str(f))
    fn(t)
    save_file(t, str(f), metadata={"format": "pt"})


LAYER = "model.layers.1.mlp.up_proj"


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop(f"{LAYER}.weight_scale"), rf"lacks {LAYER}\.weight_scale"),
    (lambda t: t.update({f"{LAYER}.weight_scale": t[f"{LAYER}.weight_scale"].float()}),
     rf"{LAYER}\.weight_scale is torch.float32, expected torch.uint8"),
    (lambda t: t.update({f"{LAYER}.weight_scale": t[f"{LAYER}.weight_scale"][:, :-1].contiguous()}),
     rf"{LAYER}\.weight_scale has shape \(256, 3\), expected \(256, 4\)"),
    (lambda t: t.update({f"{LAYER}.weight_scale": torch.full_like(t[f"{LAYER}.weight_scale"], 255)}),
     rf"{LAYER}\.weight_scale holds 1024 E8M0 NaN byte"),
])
def test_damaged_fp_tensors_are_errors_naming_the_tensor(mxfp4_export, edit, message):
    _edit(mxfp4_export, edit)
    with pytest.raises(CheckpointError, match=message):
        load_quantized(mxfp4_export)


def test_fp_tensors_on_a_layer_the_config_keeps_float(mxfp4_export):
    path = mxfp4_export / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"]["extra_config"] = {LAYER: {"bits": 16}}
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"{LAYER} has FP tensors .* says it stays in float"):
        load_quantized(mxfp4_export)


def _fp_quantizers_present() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None
               for m in ("signround.tune.fp_layer", "signround.quant.act", "signround.tune.act_inputs"))


@pytest.mark.skipif(not _fp_quantizers_present(), reason="the FP quantizers (tune/fp_layer.py, quant/act.py) and "
                                                         "activation wiring (tune/act_inputs.py) are not in this tree")
@pytest.mark.parametrize("preset", PRESETS)
def test_a_quantized_tiny_model_round_trips_exactly(preset, tiny, calib_ids, tmp_path):
    """End to end: SignRound (2 iterations) on the FP preset, auto_round export, our loader: same codes, same
    logits as the quantized model in memory with its inputs quantized the same way."""
    from signround.tune.act_inputs import act_schemes, attach_quantized_inputs
    from tests.helpers import quantize_tiny

    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, preset, iters=2)
    data = ExportInput(model, None, plan, result.weights, source="tiny", act_max=result.act_max)
    out = export_model(data, Format.AUTO_ROUND, tmp_path / "q")
    loaded = load_quantized(out, keep_codes=True)
    for name, qw in result.weights.items():
        back = loaded.get_submodule(name).quantized
        assert isinstance(qw, FPQuantized) and torch.equal(back.codes, qw.codes), name
        assert torch.equal(back.dequantize(), qw.dequantize()), name
    ckpt = read_checkpoint(out)
    assert set(ckpt.act_max) == set(result.act_max)
    for name, amax in result.act_max.items():  # NVFP4 stores 448 * 6 / act_max: read back to within rounding
        assert torch.allclose(ckpt.act_max[name], amax.float(), rtol=1e-6, atol=0), name
    attach_quantized_inputs(model, act_schemes(plan.quantized()), ckpt.act_max)
    assert torch.equal(logits(loaded, calib_ids), logits(model, calib_ids))


def test_int_layers_with_quantized_inputs_keep_their_act_scheme(tiny, calib_ids, tmp_path):
    """INT8_W8A8 in auto_round: the act_* keys are written and read back into act_schemes (no act_max: dynamic)."""
    from tests.helpers import quantize_tiny

    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, "INT8_W8A8", iters=0)
    out = export_model(ExportInput(model, None, plan, result.weights), Format.AUTO_ROUND, tmp_path / "q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert {k: qc[k] for k in ("act_bits", "act_group_size", "act_data_type", "act_dynamic")} == \
        dict(act_bits=8, act_group_size=-1, act_data_type="int", act_dynamic=True)
    ckpt = read_checkpoint(out)
    assert set(ckpt.act_schemes) == set(result.weights) and not ckpt.act_max
    for name in result.weights:
        assert ckpt.act_schemes[name].to_dict() == plan.layers[name].scheme.to_dict(), name
