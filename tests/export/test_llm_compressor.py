"""llm_compressor (compressed-tensors) export: config, byte layouts checked by an independent decoder, our loader.

The FP layouts are checked on hand-made FPQuantized layers (random valid codes and scales): the decoder below
reads the safetensors bytes with its own tables (E2M1 magnitudes, E8M0 = 2**(b-127), nibble order, the int32
bit stream), never through signround's packing code.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from signround.export.registry import ExportInput, export_model
from signround.formats import Format, check_layer
from signround.formats import ct_layout as ct
from signround.inference.checkpoint import read_checkpoint
from signround.inference.layouts import CheckpointError
from signround.inference.load import load_quantized
from signround.model.arch import arch_facts
from signround.plan import build_plan
from signround.quant.fp_types import FPQuantized
from signround.schemes import resolve_scheme
from signround.tune.act_inputs import act_schemes, attach_quantized_inputs
from tests.helpers import logits, quantize_tiny

FMT = Format.LLM_COMPRESSOR
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
FP_PRESETS = ["MXFP4", "MXFP8", "NVFP4", "FPW8A16", "FP8_STATIC", "FP8_BLOCK", "FP8_DYNAMIC"]
ACT_MAX = 3.5


# ---- an independent decoder of the stored bytes ---------------------------------------------------------------


def _bitstream(words: torch.Tensor, bits: int, n: int) -> list[int]:
    """The first n ``bits``-bit values of a little-endian stream of int32 words."""
    stream = 0
    for i, w in enumerate(words.tolist()):
        stream |= (w & 0xFFFFFFFF) << (32 * i)
    return [(stream >> (k * bits)) & (2**bits - 1) for k in range(n)]


def _e4m3(byte: int) -> float:
    s, e, m = byte >> 7, (byte >> 3) & 15, byte & 7
    v = (m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return -v if s else v


def _fp4(nibble: int) -> float:
    return (-1 if nibble & 8 else 1) * E2M1[nibble & 7]


def decode_layer(t: dict[str, torch.Tensor], cfg_group: dict) -> torch.Tensor:
    """(out, in) float64 weight from the stored tensors of one layer, per the config group's format."""
    fmt, w = cfg_group["format"], cfg_group["weights"]
    if fmt == "pack-quantized":
        out_f, in_f = t["weight_shape"].tolist()
        bits = w["num_bits"]
        q = torch.tensor([_bitstream(row, bits, in_f) for row in t["weight_packed"]], dtype=torch.float64)
        q -= 2 ** (bits - 1)  # stored unsigned, compressed-tensors offsets its signed ints
        gs = w["group_size"] or in_f
        scale = t["weight_scale"].double().repeat_interleave(gs, 1)[:, :in_f]
        return q * scale
    if fmt == "int-quantized":
        return t["weight"].double() * t["weight_scale"].double()
    if fmt in ("float-quantized", "mxfp8-quantized"):
        raw = t["weight"].view(torch.uint8)
        vals = torch.tensor([[_e4m3(b) for b in row] for row in raw.tolist()], dtype=torch.float64)
    else:
        packed = t["weight_packed"].tolist()
        vals = torch.tensor([[_fp4(b >> (4 * k) & 15) for b in row for k in (0, 1)] for row in packed],
                            dtype=torch.float64)
    out_f, in_f = vals.shape
    if fmt in ("mxfp8-quantized", "mxfp4-pack-quantized"):
        scale = torch.tensor([[2.0 ** (b - 127) for b in row] for row in t["weight_scale"].tolist()],
                             dtype=torch.float64).repeat_interleave(32, 1)
    elif fmt == "nvfp4-pack-quantized":
        s8 = torch.tensor([[_e4m3(b) for b in row] for row in t["weight_scale"].view(torch.uint8).tolist()],
                          dtype=torch.float64)
        scale = s8.repeat_interleave(16, 1) / t["weight_global_scale"].double()
    elif w["strategy"] == "block":
        r, c = w["block_structure"]
        scale = t["weight_scale"].double().repeat_interleave(r, 0)[:out_f].repeat_interleave(c, 1)[:, :in_f]
    elif w["strategy"] == "tensor":
        scale = t["weight_scale"].double().reshape(1, 1)
    else:
        gs = w["group_size"] or in_f
        scale = t["weight_scale"].double().repeat_interleave(gs, 1)[:, :in_f]
    return vals * scale


def stored(folder, name: str) -> dict[str, torch.Tensor]:
    out = {}
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            out.update({k[len(name) + 1:]: h.get_tensor(k) for k in h.keys() if k.startswith(name + ".")})
    return out


def group_of(qc: dict, name: str) -> dict:
    return next(g for g in qc["config_groups"].values() if name in g["targets"] or g["targets"] == ["Linear"])


# ---- hand-made FP layers ---------------------------------------------------------------------------------------


def handmade_fp(model, preset: str, seed: int = 1, **plan_kw):
    """A plan for ``preset`` and random valid FPQuantized codes for each of its layers; the model's weights are
    set to their dequantization, so the model in memory is the quantized one (FP quantizers are not on main)."""
    scheme = resolve_scheme(preset)
    plan = build_plan(model, arch_facts(model), scheme, formats=[FMT], **plan_kw)
    g = torch.Generator().manual_seed(seed)
    weights, act_max = {}, {}
    for p in plan.quantized():
        s, (out_f, in_f) = p.scheme, p.shape
        gs = in_f if s.group_size <= 0 else s.group_size
        rows = out_f if s.group_size == 0 else s.group_rows
        grid = (-(-out_f // rows), -(-in_f // gs))
        if s.bits == 4:
            codes = torch.randint(0, 16, (out_f, in_f), generator=g).to(torch.uint8)
        else:
            codes = (torch.randn(out_f, in_f, generator=g) * 40).to(torch.float8_e4m3fn).view(torch.uint8)
        global_scale = None
        if s.data_type == "mx_fp":
            scale = torch.exp2(torch.randint(-10 if s.bits == 8 else -7, -4, grid, generator=g).float())
        elif s.data_type == "nv_fp":
            scale = (torch.rand(grid, generator=g) * 300 + 16).to(torch.float8_e4m3fn).float()
            global_scale = torch.tensor(448 * 6 / 0.25)
        else:
            scale = torch.rand(grid, generator=g) * 2e-4 + 1e-4
        fq = FPQuantized(codes, scale, s.data_type, s.bits, gs, rows, global_scale)
        weights[p.name] = fq
        model.get_submodule(p.name).weight.data = fq.dequantize()
        if s.quantizes_activations and not s.act_dynamic:
            act_max[p.name] = torch.tensor(ACT_MAX)
    return plan, weights, act_max


def quantize_inputs(model, plan, act_max) -> int:
    """Our in-memory model with its inputs fake-quantized as ``quantize()`` leaves it (``attach_quantized_inputs``)."""
    return attach_quantized_inputs(model, act_schemes(plan.quantized()), act_max)


def export_handmade(model, preset, folder, inputs: bool = False, **plan_kw):
    """Write hand-made FP layers; ``inputs``: then make the in-memory model quantize its inputs too."""
    plan, weights, act_max = handmade_fp(model, preset, **plan_kw)
    out = export_model(ExportInput(model, None, plan, weights, source="tiny", act_max=act_max), FMT, folder)
    if inputs:
        quantize_inputs(model, plan, act_max)
    return out, plan, weights


def export_int(model, ids, scheme, folder, inputs: bool = False, **plan_kw):
    plan, result = quantize_tiny(model, ids, scheme, iters=0, formats=(FMT,), **plan_kw)
    out = export_model(ExportInput(model, None, plan, result.weights, source="tiny", act_max=result.act_max), FMT,
                       folder)
    if inputs:
        quantize_inputs(model, plan, result.act_max)
    return out, plan, result.weights


def quant_config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())["quantization_config"]


# ---- tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [32, 40, 7])
def test_int32_packing_is_compressed_tensors_dense_bitstream(bits, n):
    codes = torch.randint(0, 2**bits, (3, n), generator=torch.Generator().manual_seed(bits * n)).to(torch.uint8)
    words = ct.ct_pack(codes, bits, dim=1)
    assert words.dtype == torch.int32 and words.shape == (3, math.ceil(n * bits / 32))
    for row, w in zip(codes.tolist(), words):
        assert _bitstream(w, bits, n) == row
    assert torch.equal(ct.ct_unpack(words, bits, 1, n), codes)
    assert torch.equal(ct.ct_unpack(ct.ct_pack(codes.t().contiguous(), bits, 0), bits, 0, n), codes.t())


@pytest.mark.parametrize("scheme", ["W4A16", "W8A16", dict(bits=3, group_size=32), dict(bits=2, group_size=32),
                                    dict(bits=4, group_size=-1), dict(bits=4, group_size=0), "INT8_W8A8"],
                         ids=["w4g128", "w8g128", "w3g32", "w2g32", "w4gc", "w4gt", "int8_w8a8"])
def test_int_round_trip_is_exact(scheme, tiny, calib_ids, tmp_path):
    model = tiny("llama")
    out, plan, weights = export_int(model, calib_ids, scheme, tmp_path / "q", inputs=True)
    qc = quant_config(out)
    ck = read_checkpoint(out)
    for name, qw in weights.items():
        back = ck.layers[name]
        assert torch.equal(back.codes, qw.codes) and torch.equal(back.scale, qw.scale), name
        assert torch.equal(back.zero, qw.zero), name
        assert torch.allclose(decode_layer(stored(out, name), group_of(qc, name)), qw.dequantize().double(),
                              rtol=0, atol=1e-7), name
    assert any(bool((qw.scale < 0).any()) for qw in weights.values())  # full-range sym: negative scales travel
    fmt = "int-quantized" if scheme == "INT8_W8A8" else "pack-quantized"
    assert qc["format"] == fmt and qc["quantization_status"] == "compressed" and qc["ignore"] == ["lm_head"]
    assert torch.equal(logits(load_quantized(out), calib_ids), logits(model, calib_ids))


def test_int8_w8a8_records_dynamic_token_activations(tiny, calib_ids, tmp_path):
    out, _, _ = export_int(tiny("llama"), calib_ids, "INT8_W8A8", tmp_path / "q")
    group = quant_config(out)["config_groups"]["group_0"]
    assert group["weights"] == {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None,
                                "strategy": "channel", "dynamic": False}
    assert group["input_activations"] == {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None,
                                          "strategy": "token", "dynamic": True}
    ck = read_checkpoint(out)
    assert {s.short_name() for s in ck.act_schemes.values()} == {"w8gc_a8"} and not ck.act_max


def test_mixed_schemes_get_exact_targets_and_ignore_names_every_float_linear(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    out, plan, weights = export_int(model, calib_ids, "W4A16", tmp_path / "q", quant_lm_head=True,
                                    layer_config={"mlp.down_proj": {"bits": 8}, "model.layers.1.self_attn": {"bits": 16}})
    qc = quant_config(out)
    targets = {g["weights"]["num_bits"]: g["targets"] for g in qc["config_groups"].values()}
    assert targets[8] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert "lm_head" in targets[4] and "model.layers.0.self_attn.q_proj" in targets[4]
    assert qc["ignore"] == [f"model.layers.1.self_attn.{p}_proj" for p in "qkvo"]
    loaded = load_quantized(out)
    assert torch.equal(logits(loaded, calib_ids), logits(model, calib_ids))


def test_all_linears_quantized_target_linear_with_empty_ignore(tiny, calib_ids, tmp_path):
    out, _, _ = export_int(tiny("llama"), calib_ids, "W4A16", tmp_path / "q", quant_lm_head=True)
    qc = quant_config(out)
    assert qc["ignore"] == [] and qc["config_groups"]["group_0"]["targets"] == ["Linear"]


@pytest.mark.parametrize("preset", FP_PRESETS)
def test_fp_layouts_decode_independently_and_round_trip(preset, tiny, calib_ids, tmp_path):
    model = tiny("llama")
    out, plan, weights = export_handmade(model, preset, tmp_path / "q", inputs=True)
    qc = quant_config(out)
    assert qc["ignore"] == ["lm_head"]  # lm_head stays float: never "ignore": []
    ck = read_checkpoint(out)
    for name, fq in weights.items():
        ref = fq.dequantize().double()
        assert torch.allclose(decode_layer(stored(out, name), group_of(qc, name)), ref, rtol=1e-6, atol=0), name
        back = ck.layers[name]
        assert isinstance(back, FPQuantized) and torch.equal(back.codes, fq.codes) and torch.equal(back.scale, fq.scale)
        assert torch.equal(back.dequantize(), fq.dequantize()), name
    if preset in ("FP8_STATIC", "NVFP4"):
        assert set(ck.act_max) == set(weights)
        assert all(abs(float(v) - ACT_MAX) < 1e-5 for v in ck.act_max.values())
    assert set(ck.act_schemes) == (set(weights) if resolve_scheme(preset).quantizes_activations else set())
    assert torch.equal(logits(load_quantized(out), calib_ids), logits(model, calib_ids))


@pytest.mark.parametrize("preset,fmt,tensors", [
    ("MXFP4", "mxfp4-pack-quantized", {"weight_packed": (torch.uint8, (128, 64)), "weight_scale": (torch.uint8, (128, 4))}),
    ("MXFP8", "mxfp8-quantized", {"weight": (torch.float8_e4m3fn, (128, 128)), "weight_scale": (torch.uint8, (128, 4))}),
    ("NVFP4", "nvfp4-pack-quantized", {"weight_packed": (torch.uint8, (128, 64)),
                                       "weight_scale": (torch.float8_e4m3fn, (128, 8)),
                                       "weight_global_scale": (torch.float32, (1,)),
                                       "input_global_scale": (torch.float32, (1,))}),
    ("FPW8A16", "float-quantized", {"weight": (torch.float8_e4m3fn, (128, 128)), "weight_scale": (torch.float32, (1,))}),
    ("FP8_STATIC", "float-quantized", {"weight": (torch.float8_e4m3fn, (128, 128)),
                                       "weight_scale": (torch.float32, (128, 1)), "input_scale": (torch.float32, (1,))}),
    ("FP8_BLOCK", "float-quantized", {"weight": (torch.float8_e4m3fn, (128, 128)), "weight_scale": (torch.float32, (1, 1))}),
])
def test_fp_tensor_names_dtypes_and_static_scales(preset, fmt, tensors, tiny, tmp_path):
    out, _, _ = export_handmade(tiny("llama"), preset, tmp_path / "q")
    assert quant_config(out)["format"] == fmt
    got = stored(out, "model.layers.0.self_attn.q_proj")
    assert {k: (v.dtype, tuple(v.shape)) for k, v in got.items()} == tensors
    if "input_scale" in got:
        assert float(got["input_scale"]) == pytest.approx(ACT_MAX / 448, rel=1e-7)
    if "input_global_scale" in got:
        assert float(got["input_global_scale"]) == pytest.approx(448 * 6 / ACT_MAX, rel=1e-7)


def test_fp_config_groups_follow_compressed_tensors_presets(tiny, tmp_path):
    out, _, _ = export_handmade(tiny("llama"), "NVFP4", tmp_path / "q")
    g = quant_config(out)["config_groups"]["group_0"]
    assert g["weights"] == {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16,
                            "strategy": "tensor_group", "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
    assert g["input_activations"]["dynamic"] == "local" and g["input_activations"]["strategy"] == "tensor_group"
    out, _, _ = export_handmade(tiny("llama"), "FP8_BLOCK", tmp_path / "b")
    g = quant_config(out)["config_groups"]["group_0"]
    assert g["weights"]["strategy"] == "block" and g["weights"]["block_structure"] == [128, 128]
    assert g["input_activations"] == {"num_bits": 8, "type": "float", "symmetric": True, "group_size": 128,
                                      "strategy": "group", "dynamic": True}


def test_support_matrix_refuses_what_compressed_tensors_cannot_hold(tiny):
    model = tiny("llama")
    shape = (128, 128)
    assert check_layer(FMT, resolve_scheme("W4A16"), "x", shape) is None
    for preset in ("MXFP4", "NVFP4", "FP8_STATIC", "FP8_BLOCK", "INT8_W8A8", "W8A16"):
        assert check_layer(FMT, resolve_scheme(preset), "x", shape) is None, preset
    assert "mx_int" in check_layer(FMT, resolve_scheme("MXINT4"), "model.layers.0.mlp.up_proj", shape)
    assert "model.layers.0.mlp.up_proj" in check_layer(FMT, resolve_scheme("MXINT4"), "model.layers.0.mlp.up_proj", shape)
    rceil = check_layer(FMT, resolve_scheme("MXFP4", data_type="mx_fp_rceil"), "model.layers.1.mlp.down_proj", shape)
    assert "mx_fp_rceil" in rceil and "model.layers.1.mlp.down_proj" in rceil
    assert "only sym" in check_layer(FMT, resolve_scheme("W4A16", sym=False), "l", shape)
    assert "bits" in check_layer(FMT, resolve_scheme("W4A16", bits=5), "l", shape)
    assert "divide" in check_layer(FMT, resolve_scheme("W4A16", group_size=128), "l", (128, 192))
    with pytest.raises(ValueError, match="only sym, got asym at layer model.layers.0"):
        build_plan(model, arch_facts(model), resolve_scheme("W4A16", sym=False), formats=[FMT])
    with pytest.raises(ValueError, match="mx_int"):
        build_plan(model, arch_facts(model), resolve_scheme("MXINT4"), formats=[FMT])


def test_rceil_activations_are_refused_before_any_layer_is_written(tiny, tmp_path):
    model = tiny("llama")
    with pytest.raises(ValueError, match="rceil.*at layer model.layers.0.self_attn.q_proj"):  # the plan, first
        build_plan(model, arch_facts(model), resolve_scheme("MXFP4_RCEIL"), formats=[FMT])
    plan = build_plan(model, arch_facts(model), resolve_scheme("MXFP4_RCEIL"), formats=[Format.FAKE])
    with pytest.raises(ValueError, match="layer model.layers.0.self_attn.q_proj: .*rceil"):  # and the writer
        export_model(ExportInput(model, None, plan, {}, source="tiny"), FMT, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_static_layer_without_act_max_is_an_error(tiny, tmp_path):
    model = tiny("llama")
    plan, weights, _ = handmade_fp(model, "FP8_STATIC")
    with pytest.raises(ValueError, match="no calibrated act_max"):
        export_model(ExportInput(model, None, plan, weights, source="tiny"), FMT, tmp_path / "q")


def test_reader_refuses_a_config_that_quantizes_a_float_layer(tiny, calib_ids, tmp_path):
    """The auto-round 0.16.1 FP8_STATIC bug: "ignore": [] with a float lm_head gives NaN logits in transformers."""
    out, _, _ = export_handmade(tiny("llama"), "FP8_STATIC", tmp_path / "q")
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["ignore"] = []
    cfg["quantization_config"]["config_groups"]["group_0"]["targets"] = ["Linear"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="quantizes lm_head .* hold them in float"):
        load_quantized(out)


def test_reader_refuses_quantized_tensors_the_config_ignores(tiny, calib_ids, tmp_path):
    out, _, _ = export_int(tiny("llama"), calib_ids, "W4A16", tmp_path / "q")
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["ignore"].append("model.layers.0.mlp.up_proj")
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model.layers.0.mlp.up_proj has quantized tensors, but"):
        read_checkpoint(out)


def test_list_format_shows_the_row_with_data_types(capsys):
    from signround.cli import main

    assert main(["list", "format"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "data types" in header
    row = next(line for line in out.splitlines() if line.startswith("llm_compressor "))
    assert "fp,int,mx_fp,nv_fp" in row and "2,3,4,8" in row and " sym " in row and "compressed-tensors" in row


@pytest.mark.parametrize("preset", FP_PRESETS)
def test_fp_presets_end_to_end_through_our_loader(preset, tiny, calib_ids, tmp_path):
    """signround's own FP quantizers (and calibrated static maxima) -> llm_compressor -> load_quantized: the
    codes, scales, static maxima and the logits (inputs quantized on both sides) come back exactly."""
    model = tiny("llama")
    out, plan, weights = export_int(model, calib_ids, preset, tmp_path / "q", inputs=True)
    ck = read_checkpoint(out)
    qc = quant_config(out)
    for name, fq in weights.items():
        assert isinstance(fq, FPQuantized) and fq.data_type == resolve_scheme(preset).data_type
        back = ck.layers[name]
        assert torch.equal(back.codes, fq.codes) and torch.equal(back.scale, fq.scale), name
        assert torch.allclose(decode_layer(stored(out, name), group_of(qc, name)), fq.dequantize().double(),
                              rtol=1e-6, atol=0), name
    static = not resolve_scheme(preset).act_dynamic and resolve_scheme(preset).quantizes_activations
    assert bool(ck.act_max) == static
    _, result = quantize_tiny(tiny("llama"), calib_ids, preset, iters=0, formats=(FMT,))
    for name, amax in ck.act_max.items():  # FP8: input_scale * 448; NVFP4: 448 * 6 / input_global_scale
        assert float(amax) == pytest.approx(float(result.act_max[name]), rel=1e-6), name
    assert torch.equal(logits(load_quantized(out), calib_ids), logits(model, calib_ids))


@pytest.mark.parametrize("preset", ["FP8_STATIC", "NVFP4"])
def test_static_act_max_reproduces_the_stored_scale_exactly(preset):
    scheme = resolve_scheme(preset)
    key = "input_scale" if preset == "FP8_STATIC" else "input_global_scale"
    g = torch.Generator().manual_seed(3)
    for amax in torch.rand(500, generator=g) * 50 + 1e-3:
        stored_value = ct.static_input_tensors(scheme, amax)[key]
        back = ct.static_act_max(scheme, stored_value)
        assert torch.equal(ct.static_input_tensors(scheme, back)[key], stored_value)
        assert abs(float(back) - float(amax)) <= 2e-7 * float(amax)
