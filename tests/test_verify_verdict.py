"""``signround verify`` says PASS only when a loader other than ours agreed; a damaged checkpoint is exit 2."""

import math

import pytest
from safetensors.torch import load_file, save_file

from signround.cli import main
from signround.errors import EXIT_CHECK_FAILED
from signround.formats import Format
from signround.inference import third_party
from signround.inference.checkpoint import CheckpointError
from signround.inference.third_party import Loader
from signround.verify import Tolerances, verify_checkpoint
from signround.verify_status import LoaderStatus
from tests.helpers import export_tiny, quantize_tiny


@pytest.fixture
def gptq_dir(tiny, calib_ids, tmp_path):
    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, "W4A16", iters=0, formats=(Format.AUTO_GPTQ,))
    return export_tiny(model, plan, result, Format.AUTO_GPTQ, tmp_path / "q")


@pytest.fixture
def only_our_loader(monkeypatch):
    loaders = {"signround": third_party.LOADERS["signround"],
               "absent": Loader("absent", {"gptq": ("no_such_module_xyz",)}, "no-such-package", lambda f: None)}
    monkeypatch.setattr(third_party, "LOADERS", loaders)
    monkeypatch.setattr("signround.verify.LOADERS", loaders)


def test_only_our_loader_is_not_verified(gptq_dir, only_our_loader):
    report = verify_checkpoint(gptq_dir)
    assert not report.ok and report.exit_code == EXIT_CHECK_FAILED and report.verified_by == []
    assert report.loader_status() == {
        "signround": (LoaderStatus.REFERENCE, ""),
        "absent": (LoaderStatus.UNAVAILABLE, "not installed: no_such_module_xyz (pip install no-such-package)")}
    table = report.table(Tolerances())
    assert "PASS" not in table
    assert ("verdict: NOT VERIFIED: only signround's loader ran; unavailable: absent (not installed: "
            "no_such_module_xyz (pip install no-such-package))") in table
    assert main(["verify", str(gptq_dir), "--no_float", "-q"]) == EXIT_CHECK_FAILED
    assert main(["verify", "--model", str(gptq_dir), "--no_float", "-q"]) == EXIT_CHECK_FAILED  # eval's spelling


@pytest.mark.parametrize("argv", [[], ["a", "--model", "b"]])
def test_verify_wants_the_directory_exactly_once(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(["verify", *argv])
    assert e.value.code == 2 and "give the checkpoint directory once" in capsys.readouterr().err


def test_damaged_checkpoint_is_an_error_not_a_report(gptq_dir, only_our_loader):
    f = gptq_dir / "model.safetensors"
    tensors = load_file(str(f))
    name = "model.layers.0.mlp.up_proj.scales"
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] = math.nan
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{f}: {name} holds 1 NaN/inf"):
        verify_checkpoint(gptq_dir)
    assert main(["verify", str(gptq_dir), "--no_float", "-q"]) == 2


def test_gguf_report_names_its_loaders_and_a_damaged_file_is_an_error(tmp_path, monkeypatch):
    from signround import AutoRound, verify_gguf as vg
    from tests.gguf.gguf_testlib import tiny_arch_model, tiny_tokenizer

    ar = AutoRound(tiny_arch_model("llama"), tiny_tokenizer(), iters=0, disable_opt_rtn=True, nsamples=4, seqlen=32,
                   show_progress=False)
    (folder,) = ar.quantize_and_save(tmp_path, format="gguf:q4_0")
    monkeypatch.setattr(vg, "_installed", lambda module: False)  # llama.cpp not installed
    report = vg.verify_gguf(folder)
    assert report.loaders["gguf-py"] == (LoaderStatus.AGREED, "every tensor bit-identical")
    assert report.loaders["llama.cpp"][0] == LoaderStatus.UNAVAILABLE and report.ok and report.exit_code == 0
    assert "verdict: PASS (agreeing: gguf-py)" in report.table()
    file = next(folder.glob("*.gguf")) if folder.is_dir() else folder
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=rf"{file}: cannot read it as a GGUF file"):
        vg.verify_gguf(folder)
