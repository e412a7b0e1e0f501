"""The fake format writes the dequantized codes of ``ExportInput.weights``, not whatever the model holds."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from signround.export.registry import ExportInput, export_model
from signround.formats import Format
from tests.helpers import quantize_tiny


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: Conv1D stores its weight transposed
def test_fake_holds_the_dequantized_codes_from_the_typed_results(arch, tiny, calib_ids, tmp_path):
    model = tiny(arch)
    untouched = copy.deepcopy(model)  # float weights, never overwritten by the block loop
    plan, result = quantize_tiny(model, calib_ids, dict(bits=3, group_size=32, sym=False), iters=2,
                                 formats=(Format.FAKE,))
    out = export_model(ExportInput(untouched, None, plan, result.weights, source="tiny"), Format.FAKE, tmp_path / "f")
    stored = load_file(str(out / "model.safetensors"))
    assert plan.quantized()
    for p in plan.quantized():
        want = result.weights[p.name].dequantize()
        got = stored[f"{p.name}.weight"]
        assert torch.equal(got.t() if p.conv1d else got, want), p.name
        assert not torch.equal(want, untouched.get_submodule(p.name).weight.detach().t() if p.conv1d
                               else untouched.get_submodule(p.name).weight.detach()), p.name
    floats = [n for n, p in plan.layers.items() if not p.quantized and f"{n}.weight" in stored]
    for name in floats:
        assert torch.equal(stored[f"{name}.weight"], untouched.get_submodule(name).weight.detach()), name
