"""``signround verify``: every installed loader of a checkpoint, compared with ours and with the float model."""

from __future__ import annotations

import pytest
import torch

from signround.cli import main
from signround.formats import Format
from signround.export.registry import ExportInput, export_model
from signround.inference import third_party
from signround.inference.third_party import Loader
from signround.eval.metrics import compare_logits
from signround.verify import Tolerances, verify_checkpoint
from tests.helpers import export_tiny, quantize_tiny
from tests.interop.common import byte_tokenizer, needs


def test_compare_logits_metrics():
    ref = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    assert compare_logits(ref, ref) == (1.0, 0.0, 0.0)
    argmax, rel, kl = compare_logits(ref + 0.5, ref)  # a constant shift changes no probability
    assert argmax == 1.0 and kl < 1e-12 and rel > 0
    argmax, rel, kl = compare_logits(-ref, ref)
    assert argmax < 0.5 and rel > 1 and kl > 0.1
    with pytest.raises(ValueError, match="cannot be compared"):
        compare_logits(ref[:, :3], ref)


@pytest.fixture
def gptq_dir(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, "W4A16", iters=0, formats=(Format.AUTO_GPTQ,))
    return export_tiny(model, plan, result, Format.AUTO_GPTQ, tmp_path / "q"), model


def _fake_loader(name, noise, fail=False):
    def load(folder):
        from signround.inference.load import load_quantized

        model = load_quantized(folder)

        def run(ids):
            if fail:
                raise RuntimeError("kernel exploded")
            out = model(input_ids=ids).logits.float()
            return out + noise * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))

        return run

    return Loader(name, {"gptq": ()}, "nothing", load)


def test_disagreement_errors_and_skips_are_reported(gptq_dir, monkeypatch):
    folder, model = gptq_dir
    loaders = {"signround": third_party.LOADERS["signround"], "close": _fake_loader("close", 1e-4),
               "far": _fake_loader("far", 3.0), "broken": _fake_loader("broken", 0, fail=True),
               "absent": Loader("absent", {"gptq": ("no_such_module_xyz",)}, "no-such-package", lambda f: None)}
    monkeypatch.setattr(third_party, "LOADERS", loaders)
    monkeypatch.setattr("signround.verify.LOADERS", loaders)
    report = verify_checkpoint(folder, float_model=model)  # quantize_tiny left the quantized weights in `model`
    rows = {(c.loader, c.against): c for c in report.comparisons}
    assert rows[("close", "signround")].ok and not rows[("far", "signround")].ok
    assert rows[("signround", "float")].ok and rows[("signround", "float")].kl < 0.05
    assert report.errors == {"broken": "RuntimeError: kernel exploded"}
    assert "not installed: no_such_module_xyz (pip install no-such-package)" in report.skipped["absent"]
    table = report.table(Tolerances())
    assert "verdict: FAIL" in table and "far" in table and not report.ok
    assert main(["verify", str(folder), "--loaders", "signround,close", "--no_float", "-q"]) == 0
    assert main(["verify", str(folder), "--loaders", "signround,far", "-q"]) == 1
    with pytest.raises(ValueError, match="unknown loader"):
        verify_checkpoint(folder, loaders=["nope"])


@pytest.mark.interop
@needs("auto_round", "optimum", "gptqmodel")
@pytest.mark.parametrize("fmt", [Format.AUTO_GPTQ, Format.AUTO_AWQ, Format.AUTO_ROUND])
def test_real_loaders_agree_on_our_exports(fmt, tiny, calib_ids, tmp_path, capsys):
    model = tiny("llama")
    model.save_pretrained(tmp_path / "float")
    plan, result = quantize_tiny(model, calib_ids, "W4A16", iters=0, formats=(fmt,))
    data = ExportInput(model, byte_tokenizer(), plan, result.weights, source=str(tmp_path / "float"))
    folder = export_model(data, fmt, tmp_path / "q")
    assert main(["verify", str(folder), "-q"]) == 0
    out = capsys.readouterr().out
    expected = {Format.AUTO_GPTQ: ["transformers+auto-round", "transformers+gptqmodel", "gptqmodel"],
                Format.AUTO_AWQ: ["transformers+gptqmodel", "gptqmodel"],
                Format.AUTO_ROUND: ["transformers+auto-round"]}[fmt]
    rows = [line.split() for line in out.splitlines() if line.split()[1:2] in (["signround"], ["float"])]
    assert sorted(r[0] for r in rows if r[1] == "signround") == sorted(expected)
    assert sorted(r[0] for r in rows if r[1] == "float") == sorted(expected + ["signround"])
    assert all(r[-1] == "ok" for r in rows) and "verdict: PASS" in out


def test_float_checkpoint_verifies_with_transformers(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    model.save_pretrained(tmp_path / "float")
    report = verify_checkpoint(tmp_path / "float", float_model=model)
    assert report.method == "float" and list(report.seconds) == ["signround", "transformers"] and report.ok
    assert [(c.loader, c.against) for c in report.comparisons] == [("transformers", "signround"),
                                                                   ("signround", "float"), ("transformers", "float")]
    assert all(c.rel < 1e-5 for c in report.comparisons) and report.verified_by == ["transformers"]
    assert report.exit_code == 0 and "verdict: PASS (agreeing: transformers)" in report.table(Tolerances())


@pytest.mark.interop
@needs("compressed_tensors")
@pytest.mark.parametrize("scheme", ["W4A16", "FPW8A16", "FP8_STATIC"])
def test_compressed_tensors_checkpoints_verify(scheme, tiny, calib_ids, tmp_path, capsys):
    """llm_compressor outputs: read by our loader and by transformers' compressed-tensors loader (bfloat16)."""
    model = tiny("llama")
    model.save_pretrained(tmp_path / "float")
    plan, result = quantize_tiny(model, calib_ids, scheme, iters=0, formats=(Format.LLM_COMPRESSOR,))
    data = ExportInput(model, byte_tokenizer(), plan, result.weights, source=str(tmp_path / "float"),
                       act_max=result.act_max)
    folder = export_model(data, Format.LLM_COMPRESSOR, tmp_path / "q")
    report = verify_checkpoint(folder, float_model=model)  # quantize_tiny left the quantized weights in `model`
    assert report.method == "compressed-tensors"
    assert report.verified_by == ["transformers+compressed-tensors"], report.table(Tolerances())
    cmp = {(c.loader, c.against): c for c in report.comparisons}
    between = cmp[("transformers+compressed-tensors", "signround")]
    assert between.kl < 1e-3 and between.rel < 0.1  # the same weights; bfloat16 compute against our float32
    if scheme in ("W4A16", "FPW8A16"):  # weights only: our loader gives the in-memory quantized model's logits
        assert cmp[("signround", "float")].rel < 1e-5


@pytest.mark.interop
@needs("compressed_tensors")
def test_compressed_tensors_emulation_of_mx_inputs_is_not_taken_as_proof(tiny, calib_ids, tmp_path):
    """MXFP4 inputs: compressed-tensors' CPU emulation rounds their scales by another rule, so it is skipped with
    the reason and the verdict is NOT VERIFIED rather than a FAIL (or a PASS) that says nothing about the file."""
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, "MXFP4", iters=0, formats=(Format.LLM_COMPRESSOR,))
    data = ExportInput(model, byte_tokenizer(), plan, result.weights, source="tiny", act_max=result.act_max)
    report = verify_checkpoint(export_model(data, Format.LLM_COMPRESSOR, tmp_path / "q"))
    text = report.table(Tolerances())
    assert report.verified_by == [] and report.exit_code != 0 and "NOT VERIFIED" in text
    assert "nearest power of two" in text and "signround                        ran (reference)" in text
