"""The real SmolLM2-135M through every format and every installed loader (``signround verify``).

One plain-RTN quantization (W4A16, group 64: 128 does not divide 576, real-loaders §2e) written as
auto_gptq, auto_awq and auto_round from the same codes; each directory reloads in our loader with
logits identical to the in-memory model, and the main third-party loader of each format agrees with
it (the others run on the tiny models; all of them: ``signround verify DIR``). Sized for CI: one
float comparison, two prompts of 64 tokens.
"""

from __future__ import annotations

import pytest
import torch

from signround.api import AutoRound
from signround.formats import Format
from signround.inference.load import load_quantized
from signround.verify import Tolerances, prompt_ids, verify_checkpoint
from tests.interop.common import needs

pytestmark = [pytest.mark.model, pytest.mark.interop]

FORMATS = (Format.AUTO_GPTQ, Format.AUTO_AWQ, Format.AUTO_ROUND)


@pytest.fixture(scope="module")
def smollm2_exports(smollm2_dir, tmp_path_factory):
    ar = AutoRound(str(smollm2_dir), scheme="W4A16", group_size=64, iters=0, disable_opt_rtn=True, dtype="float32",
                   show_progress=False)
    fmts = ",".join(f.value for f in FORMATS)
    ar.quantize(fmts)  # keeps the quantized model in memory (quantize_and_save streams and keeps nothing)
    dirs = ar.save_quantized(tmp_path_factory.mktemp("smollm2"), format=fmts)
    return ar.model, dict(zip(FORMATS, dirs))


LOADERS = {  # the loaders run on each format
    Format.AUTO_GPTQ: ["signround", "transformers+gptqmodel"],
    Format.AUTO_AWQ: ["signround", "transformers+gptqmodel"],
    Format.AUTO_ROUND: ["signround", "transformers+auto-round"],
}


@needs("auto_round", "optimum", "gptqmodel")
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.value)
def test_every_installed_loader_agrees(fmt, smollm2_exports, smollm2_dir):
    quantized, dirs = smollm2_exports
    folder = dirs[fmt]
    ids = prompt_ids(folder, n_prompts=2, length=64)
    with torch.no_grad():
        ref = quantized(input_ids=ids).logits
        assert torch.equal(load_quantized(folder)(input_ids=ids).logits, ref)
    float_model = str(smollm2_dir) if fmt == Format.AUTO_GPTQ else None
    report = verify_checkpoint(folder, float_model=float_model, loaders=LOADERS[fmt], ids=ids)
    print(report.table(Tolerances()))
    assert report.ok, report.table(Tolerances())
    assert list(report.seconds) == LOADERS[fmt]
