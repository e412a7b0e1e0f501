"""Checkpoints written by the PyPI auto-round package load in signround and match auto-round's own loader.

auto-round's loader (transformers + auto-round, ``AutoRoundConfig(backend="torch")`` for GPTQ) is the
reference where it can load the checkpoint; for AWQ (its loader fails: real-loaders §2) and asym GPTQ
(TypeError in auto-round 0.16.1) the reference is transformers + GPTQModel.
"""

from __future__ import annotations

import pytest
import torch

from signround.inference.load import load_quantized
from tests.helpers import logits
from tests.interop.autoround_export import CASES
from tests.interop.common import assert_close, hf_logits, needs

pytestmark = pytest.mark.interop

REFERENCE = {  # case -> the loader that is the reference
    "gptq_w4": "auto-round", "gptq_w2g64": "auto-round", "gptq_w4_asym": "gptqmodel",
    "awq_w4": "gptqmodel", "awq_w4_asym": "gptqmodel",
    "ar_w4": "auto-round", "ar_w3g64_asym": "auto-round", "ar_w8": "auto-round",
}
IDS = torch.randint(3, 259, (4, 48), generator=torch.Generator().manual_seed(1))  # byte tokens of the tiny tokenizer


def _reference_logits(name, folder):
    if REFERENCE[name] == "gptqmodel":
        pytest.importorskip("gptqmodel", reason="transformers + GPTQModel is the reference for this checkpoint")
        return hf_logits(folder, IDS)[0]
    from transformers import AutoRoundConfig

    kwargs = {"quantization_config": AutoRoundConfig(backend="torch")} if name.startswith("gptq") else {}
    return hf_logits(folder, IDS, **kwargs)[0]


def test_every_case_has_a_reference():
    assert set(REFERENCE) == set(CASES)


@needs("auto_round")
@pytest.mark.parametrize("name", list(CASES))
def test_loads_in_signround_and_matches_the_reference_loader(name, autoround_outputs):
    folder = autoround_outputs[name]
    ours = load_quantized(folder, dtype="float32")
    assert_close(logits(ours, IDS), _reference_logits(name, folder), rel_max=0.01)


@needs("auto_round")
@pytest.mark.parametrize("name", ["gptq_w4", "awq_w4_asym", "ar_w3g64_asym"])
def test_decoded_weights_are_a_rounding_of_the_source_weights(name, autoround_outputs):
    """Independent of any loader: decoded weights are within half a step of the float ones (one step where clipped)."""
    from transformers import AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(autoround_outputs["src"])
    loaded = load_quantized(autoround_outputs[name], keep_codes=True)
    for layer in ("model.layers.0.mlp.up_proj", "model.layers.1.self_attn.k_proj"):
        qw = loaded.get_submodule(layer).quantized
        w = src.get_submodule(layer).weight.detach()
        step = qw.scale.abs().repeat_interleave(qw.group_size, dim=1)  # (out, in)
        err = (qw.dequantize() - w).abs()
        ratio = err / step
        assert float(ratio.max()) <= 1.05, f"{name} {layer}: max error / step {float(ratio.max())}"
        assert float((ratio > 0.505).float().mean()) < 0.01, f"{name} {layer}: too many weights off by over half a step"
