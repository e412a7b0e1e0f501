"""AutoScheme from the command line: the flags of the options table, checked before the model loads."""

import json

from signround.cli import main
from signround.errors import EXIT_BAD_INPUT


def test_avg_bits_needs_options_before_loading(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")  # never opened: the check comes first
    assert main(["--model", missing, "--avg_bits", "3", "--output_dir", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "options is missing" in capsys.readouterr().err
    assert main(["--model", missing, "--options", "W2A16G64,W4A16", "--output_dir", str(tmp_path)]) == EXIT_BAD_INPUT
    assert main(["--model", missing, "--avg_bits", "3", "--options", "W2A16G64,W9A16",
                 "--output_dir", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "W9A16" in capsys.readouterr().err


def test_streamed_cli_run_records_the_choice(tiny_model_dir, tmp_path):
    assert main(["--model", str(tiny_model_dir), "--avg_bits", "3.5", "--options", "W2A16G64,W4A16", "--iters", "0",
                 "--nsamples", "4", "--seqlen", "64", "--shared_layers", "o_proj,down_proj", "--autoscheme_rounds", "2", "--output_dir",
                 str(tmp_path), "-q"]) == 0
    out = next(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    run = json.loads((out / "signround.json").read_text())
    auto = run["settings"]["auto_scheme"]
    assert auto["options"] == ["W2A16G64", "W4A16"] and auto["avg_bits"] == 3.5 and auto["rounds"] == 2
    assert auto["achieved_avg_bits"] <= 3.5 and auto["shared_layers"] == [["o_proj", "down_proj"]]
    for b in range(2):
        assert auto["layers"][f"model.layers.{b}.self_attn.o_proj"] == auto["layers"][f"model.layers.{b}.mlp.down_proj"]
    for name, option in auto["layers"].items():
        assert run["plan"]["layers"][name]["scheme"]["bits"] == (2 if option == "W2A16G64" else 4)
