"""Backend registry: capability filtering, priority, requirements, the backend= override and its log line."""

from __future__ import annotations

import logging

import pytest
import torch

from signround.formats import Format
from signround.inference import backends
from signround.inference.backends import Backend, select_backend
from signround.inference.layouts import Layout
from signround.inference.load import load_quantized
from signround.inference.qlinear import QuantLinear
from signround.quant.types import QuantizedWeight
from tests.helpers import export_tiny, logits, quantize_tiny


def _qw(bits=4, sym=True):
    codes = torch.zeros(32, 64, dtype=torch.uint8)
    return QuantizedWeight(codes, torch.ones(32, 2), torch.full((32, 2), 2 ** (bits - 1), dtype=torch.uint8), bits, 32, sym)


class Marker(QuantLinear):
    pass


def _fast(requires=(), sym=(True,)):
    return Backend("fast", frozenset({Layout.GPTQ}), frozenset({4}), frozenset(sym), frozenset({"cpu"}), 50, requires,
                   lambda qw, bias, dtype, keep: Marker(qw, bias, dtype, keep))


def test_packed_dequant_backend_runs_every_layout():
    for layout in Layout:
        chosen, why = select_backend(layout, _qw(3, sym=False), "cpu")
        assert chosen.name == "packed_dequant" and "highest-priority match" in why


def test_priority_capabilities_and_requirements(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "fast", _fast())
    assert select_backend(Layout.GPTQ, _qw(), "cpu")[0].name == "fast"
    chosen, why = select_backend(Layout.GPTQ, _qw(3), "cpu")
    assert chosen.name == "packed_dequant" and "fast: supports bits [4], got 3" in why
    chosen, why = select_backend(Layout.AWQ_GEMM, _qw(), "cpu")
    assert chosen.name == "packed_dequant" and "supports layouts ['gptq'], got awq_gemm" in why
    assert "fast: supports sym only, got asym" in select_backend(Layout.GPTQ, _qw(sym=False), "cpu")[1]
    assert "supports devices ['cpu'], got cuda" in select_backend(Layout.GPTQ, _qw(), "cuda")[1]
    monkeypatch.setitem(backends.BACKENDS, "fast", _fast(requires=("no_such_kernel_module",)))
    chosen, why = select_backend(Layout.GPTQ, _qw(), "cpu")
    assert chosen.name == "packed_dequant" and "fast: not installed (no_such_kernel_module)" in why


def test_override(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown backend 'marlin'; valid backends: dequant, packed_dequant, packed_int4, packed_int8"):
        select_backend(Layout.GPTQ, _qw(), "cpu", "marlin")
    monkeypatch.setitem(backends.BACKENDS, "fast", _fast(requires=("no_such_kernel_module",)))
    with pytest.raises(ValueError, match="backend 'fast' cannot run this layer: it supports bits \\[4\\], got 8"):
        select_backend(Layout.GPTQ, _qw(8), "cpu", "fast")
    with pytest.raises(ValueError, match="backend 'fast' needs no_such_kernel_module, which is not installed"):
        select_backend(Layout.GPTQ, _qw(), "cpu", "fast")
    assert select_backend(Layout.GPTQ, _qw(), "cpu", "dequant") == (backends.BACKENDS["dequant"], "requested with backend=")
    with pytest.raises(RuntimeError, match="already registered"):
        backends.register_backend("dequant", layouts={Layout.GPTQ}, bits={4})(lambda *a: None)


def test_load_quantized_selects_logs_and_overrides(tiny, calib_ids, tmp_path, monkeypatch, caplog):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, "W4A16", iters=0, formats=(Format.AUTO_GPTQ,),
                                 layer_config={"mlp.down_proj": {"bits": 8}})
    out = export_tiny(model, plan, result, Format.AUTO_GPTQ, tmp_path / "q")
    monkeypatch.setitem(backends.BACKENDS, "fast", _fast())
    with caplog.at_level(logging.INFO, logger="signround.inference.load"):
        loaded = load_quantized(out)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend ")]
    assert "backend fast for 12 gptq layers (4-bit, group 128, sym): highest-priority match (priority 50)" in lines
    assert any(line.startswith("backend packed_dequant for 2 gptq layers (8-bit, group 128, sym)") and "fast: supports bits [4], got 8"
               in line for line in lines)
    assert isinstance(loaded.get_submodule("model.layers.0.self_attn.q_proj"), Marker)
    assert torch.equal(logits(loaded, calib_ids), logits(model, calib_ids))
    forced = load_quantized(out, backend="dequant")
    assert not any(isinstance(m, Marker) for m in forced.modules())
    with pytest.raises(ValueError, match="unknown backend 'exllama'; valid backends: dequant, fast, packed_dequant, packed_int4, packed_int8"):
        load_quantized(out, backend="exllama")
