"""The bad-input tier: every wrong argument, path or file fails cleanly, early, and touches nothing.

Each case asserts the exit code (CLI: 2 for bad input) or the error type (API), a message naming the
culprit, that no file was written, changed or deleted anywhere under the test's folders, and that it
failed before calibration (stage "calib") or before the model even loaded (stage "load").
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import signround.api
import signround.calib
from signround import AutoRound
from signround.cli import main
from signround.errors import BadInputError, OutputPathError


@pytest.fixture
def tiny_src(tiny_model_dir):
    return tiny_model_dir


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its content hash (directories marked), to prove nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def guards(monkeypatch):
    """guards("load") makes loading the model fail the test; calibration and quantization always do."""

    def fail(what):
        def _fail(*a, **k):
            raise AssertionError(f"{what} started: the bad input was not caught before it")
        return _fail

    monkeypatch.setattr(signround.calib, "get_calibration_data", fail("calibration"))
    monkeypatch.setattr(signround.api, "quantize_model", fail("quantization"))

    def arm(stage: str) -> None:
        if stage == "load":
            monkeypatch.setattr(signround.api, "open_model", fail("model loading"))

    return arm


def _previous_output(tmp: Path) -> None:
    d = tmp / "out" / "tiny-w4g128-auto_round"
    d.mkdir(parents=True)
    (d / "signround.json").write_text(json.dumps({"format": "auto_round"}))
    (d / "model.safetensors").write_bytes(b"previous run")


def _foreign_dir(tmp: Path) -> None:
    d = tmp / "out" / "tiny-w4g128-auto_round"
    d.mkdir(parents=True)
    (d / "notes.txt").write_text("the user's notes")


def _a_file(tmp: Path) -> None:
    (tmp / "afile").write_text("not a directory")


def _bad_config(model: Path) -> None:
    (model / "config.json").write_text("{ this is not json")


def _truncated_weights(model: Path) -> None:
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


_DAMAGE = (_bad_config, _truncated_weights)  # setups that take a private copy of the model and damage it


# id, extra argv ({model}, {tmp} substituted), message regex, stage, setup
CLI_CASES = [
    ("missing-model", ["--model", "{tmp}/missing"], r"model path not found: .*missing", "calib", None),
    ("not-a-model-dir", ["--model", "{tmp}/out"], r"not a model directory", "calib",
     lambda t: (t / "out").mkdir()),
    ("missing-gguf", ["--model", "{tmp}/m.gguf"], r"GGUF model file not found: .*m\.gguf", "calib", None),
    ("missing-package", ["--model", "pkg:no_such_package_xyz"], r"no_such_package_xyz.* not installed", "load", None),
    ("unknown-scheme", ["--scheme", "W9A16"], r"unknown scheme 'W9A16'", "load", None),
    ("bits-9", ["--bits", "9"], r"takes bits 2\.\.8", "load", None),
    ("bits-1", ["--bits", "1"], r"takes bits 2\.\.8", "load", None),
    ("group-48", ["--group_size", "48"], r"group_size must be -1 .* power of two, got 48", "load", None),
    ("group-minus-3", ["--group_size", "-3"], r"group_size .* got -3", "load", None),
    ("iters-negative", ["--iters", "-1"], r"iters must be >= 0, got -1", "load", None),
    ("batch-0", ["--batch_size", "0"], r"batch_size must be >= 1, got 0", "load", None),
    ("nsamples-0", ["--nsamples", "0"], r"nsamples must be >= 1, got 0", "load", None),
    ("seqlen-1", ["--seqlen", "1"], r"seqlen must be >= 2, got 1", "load", None),
    ("lr-0", ["--lr", "0"], r"lr must be positive", "load", None),
    ("lr-negative", ["--lr", "-0.1"], r"lr must be positive, got -0\.1", "load", None),
    ("minmax-lr-0", ["--minmax_lr", "0"], r"minmax_lr must be positive", "load", None),
    ("early-stop-negative", ["--early_stop", "-1"], r"early_stop must be >= 0, got -1", "load", None),
    ("eval-every-negative", ["--eval_every", "-1"], r"eval_every must be >= 0, got -1", "load", None),
    ("gas-0", ["--gradient_accumulate_steps", "0"], r"gradient_accumulate_steps must be >= 1", "load", None),
    ("seed-negative", ["--seed", "-5"], r"seed must be >= 0, got -5", "load", None),
    ("unknown-format", ["--format", "gptq_v9"], r"unknown format 'gptq_v9'", "load", None),
    ("unknown-gguf-type", ["--format", "gguf:q9_k"], r"unknown GGUF type 'gguf:q9_k'", "load", None),
    ("gguf-plus-other", ["--format", "gguf:q4_k_m,auto_round"], r"gguf:q4_k_m cannot be combined with auto_round",
     "load", None),
    ("unknown-recipe", ["--recipe", "fastest"], r"recipe must be one of default, best", "load", None),
    ("layer-config-list", ["--layer_config", "[1,2]"], r"--layer_config must be a JSON object", "load", None),
    ("layer-config-not-json", ["--layer_config", "{bad"], r"--layer_config is not valid JSON", "load", None),
    ("layer-config-bad-scheme", ["--layer_config", '{"q_proj": "W9A16"}'], r"layer_config\['q_proj'\]: unknown scheme",
     "calib", None),
    ("device-unknown", ["--device", "tpu9"], r"device 'tpu9'", "load", None),
    ("device-cuda-missing", ["--device", "cuda:0"], r"device 'cuda:0' requested but CUDA is not available", "load",
     None),
    ("tune-dtype", ["--tune_dtype", "int8"], r"tune_dtype must be one of auto, float32", "load", None),
    ("dtype", ["--dtype", "float8"], r"dtype must be one of auto, float32", "load", None),
    ("dataset-missing-file", ["--dataset", "{tmp}/calib.jsonl"], r"calibration file not found: .*calib\.jsonl", "load",
     None),
    ("dataset-bad-option", ["--dataset", "signround:bundled:nosuchoption=3"], r"nosuchoption", "load", None),
    ("output-is-a-file", ["--output_dir", "{tmp}/afile"], r"afile", "load", _a_file),
    ("output-under-a-file", ["--output_dir", "{tmp}/afile/sub"], r"afile", "load", _a_file),
    ("output-unwritable", ["--output_dir", "/proc/signround-out"], r"/proc", "load", None),
    ("output-foreign-dir", ["--output_dir", "{tmp}/out"], r"tiny-w4g128-auto_round", "load", _foreign_dir),
    ("output-previous-run", ["--output_dir", "{tmp}/out"], r"--overwrite", "load", _previous_output),
    ("foreign-dir-even-with-overwrite", ["--output_dir", "{tmp}/out", "--overwrite"], r"tiny-w4g128-auto_round",
     "load", _foreign_dir),
    ("seqlen-over-positions", ["--seqlen", "512", "--nsamples", "2"], r"seqlen 512 is longer than the model's 256",
     "calib", None),
    ("bits-the-format-cannot-hold", ["--scheme", "W6A16", "--format", "auto_round"],
     r"auto_round supports bits .* got 6 at layer model\.layers\.0", "calib", None),
    ("awq-bits", ["--bits", "3", "--format", "auto_awq"], r"auto_awq supports bits \[4\], got 3", "calib", None),
    ("awq-lm-head", ["--quant_lm_head", "--format", "auto_awq"], r"auto_awq cannot hold a quantized lm_head", "calib",
     None),
    ("fused-group-mixed", ["--layer_config", '{"q_proj": "W8A16"}'], r"fuse .*q_proj.*same scheme", "calib", None),
    ("gguf-scheme-other-format", ["--scheme", "GGUF:Q4_K_M", "--format", "auto_round"],
     r"GGUF scheme .* can only be exported as GGUF", "load", None),
    ("gguf-mixes-disagree", ["--scheme", "GGUF:Q4_K_M", "--format", "gguf:q2_k"], r"name different mixes", "load",
     None),
    ("invalid-config-json", [], r"config\.json", "calib", _bad_config),
    ("truncated-safetensors", [], r"model\.safetensors", "calib", _truncated_weights),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, tiny_src, tmp_path, guards, capsys):
    _, extra, message, stage, setup = case
    model = tiny_src
    if setup in _DAMAGE:
        model = Path(shutil.copytree(tiny_src, tmp_path / "tiny"))
        setup(model)
    elif setup:
        setup(tmp_path)
    argv = ["--model", "{model}", "--output_dir", "{tmp}/out", "-q"] + extra
    argv = [a.replace("{model}", str(model)).replace("{tmp}", str(tmp_path)) for a in argv]
    if "--model" in extra:  # the case's own --model wins
        argv = argv[2:]
    guards(stage)
    before = _snapshot(tmp_path), _snapshot(tiny_src)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(message, err), err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, f"message printed more than once: {err}"
    assert "Traceback" not in err
    assert (_snapshot(tmp_path), _snapshot(tiny_src)) == before


# keyword arguments, expected error type, message regex
API_CASES = [
    ("bits-string", {"bits": "four"}, BadInputError, r"bits must be an integer, got 'four'"),
    ("iters-string", {"iters": "10"}, BadInputError, r"iters must be an integer, got '10'"),
    ("sym-string", {"sym": "no"}, BadInputError, r"sym must be True or False, got 'no'"),
    ("group-float", {"group_size": 1.5}, BadInputError, r"group_size must be an integer"),
    ("nsamples-bool", {"nsamples": True}, BadInputError, r"nsamples must be an integer, got True"),
    ("lr-string", {"lr": "fast"}, BadInputError, r"lr must be a number, got 'fast'"),
    ("device-tpu", {"device": "tpu9"}, BadInputError, r"device 'tpu9'"),
    ("layer-config-list", {"layer_config": [1, 2]}, BadInputError, r"layer_config must be a dict"),
    ("ignore-layers-int", {"ignore_layers": 5}, BadInputError, r"ignore_layers must be a string"),
    ("early-stop-negative", {"early_stop": -1}, BadInputError, r"early_stop must be >= 0"),
    ("unknown-keyword", {"iterz": 3}, TypeError, r"unknown option\(s\) iterz"),
    ("unknown-recipe", {"recipe": "fastest"}, BadInputError, r"recipe must be one of"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_fails_before_the_model_loads(case, tiny_src, tmp_path, guards):
    _, kwargs, error, message = case
    guards("load")
    before = _snapshot(tiny_src)
    with pytest.raises(error, match=message):
        AutoRound(str(tiny_src), **kwargs)
    assert _snapshot(tiny_src) == before


@pytest.mark.parametrize("output, setup", [("afile", _a_file), ("out", _foreign_dir), ("out", _previous_output)])
def test_api_output_checked_before_calibration(tiny_src, tmp_path, guards, output, setup):
    setup(tmp_path)
    ar = AutoRound(str(tiny_src), iters=0, nsamples=2, seqlen=32, show_progress=False)
    guards("calib")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputPathError, match=re.escape(str(tmp_path / output))):
        ar.quantize_and_save(tmp_path / output, format="auto_round")
    assert _snapshot(tmp_path) == before


def test_default_seqlen_is_clamped_to_the_positions_with_a_warning(caplog):
    from signround.config import resolve_run
    from signround.options import UserOptions

    with caplog.at_level("WARNING"):
        run = resolve_run(UserOptions({"iters": 2}), max_positions=256)  # default 2048 > 256 positions
    assert run.seqlen == 256
    assert "2048 tokens would exceed the model's 256 positions" in caplog.text


@pytest.mark.parametrize("arch, positions", [("gpt2", 256), ("llama", 256), ("opt", 256)])
def test_positions_are_read_for_every_architecture(tiny, arch, positions):
    """GPT-2 names its positions n_positions: a seqlen over it is refused before calibration, not an IndexError."""
    from signround.config import resolve_run
    from signround.model.arch import max_positions
    from signround.options import UserOptions

    n = max_positions(tiny(arch))
    assert n == positions
    with pytest.raises(BadInputError, match=f"seqlen 512 is longer than the model's {n} positions"):
        resolve_run(UserOptions({"seqlen": 512, "iters": 1}), max_positions=n)
