"""The command line: help, list, plan printing, recipes, and errors reported without a traceback."""

import json

import pytest
import torch

from signround.cli import main
from signround.config import resolve_run
from signround.options import UserOptions
from signround.recipes import RECIPES
from signround.tune.precision import resolve_tune_dtype


@pytest.fixture
def tiny_dir(tiny_model_dir):
    return tiny_model_dir


def test_help_lists_the_main_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--scheme", "--format", "--iters", "--nsamples", "--layer_config", "--print_plan"):
        assert flag in out


def test_list_format_scheme_recipe(capsys):
    assert main(["list", "format"]) == 0
    out = capsys.readouterr().out
    assert "auto_round" in out and "fake" in out
    assert main(["list", "scheme"]) == 0
    assert "W2A16G64" in capsys.readouterr().out
    assert main(["list", "recipe"]) == 0
    assert "iters=1000" in capsys.readouterr().out


def test_print_plan(tiny_dir, capsys):
    assert main(["--model", str(tiny_dir), "--print_plan", "--scheme", "W2A16G32", "-q"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in out and "w2g32" in out and "14 of 15" in out


def test_bad_input_is_a_one_line_error_with_exit_code_2(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing"), "-q"]) == 2
    assert "model path not found" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--scheme", "W9A9", "-q"]) == 2
    assert "unknown scheme" in capsys.readouterr().err


def test_quantize_rtn_end_to_end_and_eval(tiny_dir, tmp_path, capsys):
    out_root = tmp_path / "out"
    assert main(["--model", str(tiny_dir), "--iters", "0", "--disable_opt_rtn", "--output_dir", str(out_root),
                 "--format", "auto_round", "-q"]) == 0
    folder = out_root / "tiny-w4g128-auto_round"
    assert (folder / "model.safetensors").is_file()
    capsys.readouterr()
    text = tmp_path / "eval.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 80)
    assert main(["eval", "--model", str(folder), "--text", str(text), "--seqlen", "64", "--max_windows", "2", "-q"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ppl"] > 1 and res["kl"] is not None and res["kl"] >= 0 and res["tokens"] == 2 * 63


def test_recipes_fill_only_unset_values():
    best = resolve_run(UserOptions({"recipe": "best", "nsamples": 16}))
    assert best.tuning.iters == 1000 and best.nsamples == 16 and best.seqlen == RECIPES["best"]["seqlen"]
    assert resolve_run(UserOptions({"recipe": "light"})).tuning.rounding_lr == 5e-3
    assert resolve_run(UserOptions({"recipe": "light", "lr": 0.01})).tuning.rounding_lr == 0.01
    with pytest.raises(ValueError, match="recipe must be one of"):
        UserOptions({"recipe": "fastest"})


def test_tune_dtype_is_a_function_of_the_hardware_not_a_timing():
    assert resolve_tune_dtype("float32", "cpu")[0] == torch.float32
    assert resolve_tune_dtype("bf16", "cpu")[0] == torch.bfloat16
    assert resolve_tune_dtype("auto", "cpu", frozenset({"avx2", "amx_bf16"})) == (
        torch.bfloat16, "auto: CPU flag amx_bf16 (AMX bfloat16 matmuls)")
    assert resolve_tune_dtype("auto", "cpu", frozenset({"avx2", "avx512f"}))[0] == torch.float32
    with pytest.raises(ValueError, match="unknown tune_dtype"):
        resolve_tune_dtype("int8", "cpu")
