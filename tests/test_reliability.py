"""What users must be able to trust: the same command writes the same bytes, and records every choice it made."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from signround.cli import main


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("method", [["--iters", "0", "--disable_opt_rtn"], ["--iters", "0"], ["--iters", "3"]],
                         ids=["rtn", "opt_rtn", "signround"])
def test_the_same_command_writes_the_same_bytes(tiny_model_dir, tmp_path, method):
    common = ["--model", str(tiny_model_dir), "--nsamples", "4", "--seqlen", "32", "--batch_size", "2", "-q",
              "--format", "auto_round"]
    runs = []
    for name in ("a", "b"):
        assert main(common + method + ["--output_dir", str(tmp_path / name)]) == 0
        runs.append(_digests(tmp_path / name / "tiny-w4g128-auto_round"))
    assert runs[0] == runs[1]
    assert {"model.safetensors", "config.json", "signround.json", "quant_log.json"} <= set(runs[0])


def test_signround_json_records_every_resolved_choice(tiny_model_dir, tmp_path):
    assert main(["--model", str(tiny_model_dir), "--iters", "2", "--nsamples", "3", "--seqlen", "32",
                 "--batch_size", "8", "--output_dir", str(tmp_path), "-q"]) == 0
    run = json.loads((tmp_path / "tiny-w4g128-auto_round" / "signround.json").read_text())
    s = run["settings"]
    assert (s["method"], s["start"], s["optimizer"], s["iters"]) == ("signround", "search", "sign", 2)
    assert s["lr"] == pytest.approx(1 / 50) and s["minmax_lr"] == pytest.approx(1 / 50)
    assert s["batch_size"] == 2  # 8 asked, but 3 rows leave 2 tuning rows (1 held out): what ran is recorded
    assert (s["nsamples"], s["seqlen"], s["calibration_rows"]) == (3, 32, 3)
    rt = s["runtime"]
    assert rt["device"] == "cpu" and rt["tune_dtype"] in ("float32", "bfloat16") and rt["tune_dtype_reason"]
    assert rt["threads"] == torch.get_num_threads()
    assert set(s["versions"]) == {"signround", "torch", "transformers", "python"}
    assert s["versions"]["torch"] == torch.__version__


def test_adam_optimiser_is_recorded_and_tunes(tiny_model_dir, tmp_path):
    assert main(["--model", str(tiny_model_dir), "--iters", "4", "--adam", "--nsamples", "4", "--seqlen", "32",
                 "--batch_size", "2", "--output_dir", str(tmp_path), "-q"]) == 0
    folder = tmp_path / "tiny-w4g128-auto_round"
    assert json.loads((folder / "signround.json").read_text())["settings"]["optimizer"] == "adam"
    blocks = json.loads((folder / "quant_log.json").read_text())["blocks"]
    assert all(b["loss_after"] <= b["loss_before"] for b in blocks.values())


def test_a_dequantized_gguf_is_named_as_such_wherever_it_is_the_float_model(tmp_path, smollm2_dir):
    from signround.record import float_model_note

    assert "dequantized from SmolLM2-135M-Instruct.Q4_1.gguf" in float_model_note(str(smollm2_dir))
    assert "dequantized from the GGUF file m.gguf" in float_model_note(str(tmp_path / "m.gguf"))
    assert float_model_note(str(tmp_path)) is None  # a plain float checkpoint needs no note
