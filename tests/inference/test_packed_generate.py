"""``signround generate`` on a tiny quantized checkpoint: the streamed text is the greedy continuation the
packed model computes, the speed line reaches stderr, bad input is a one-line error."""

from __future__ import annotations

import re

import torch
from transformers import AutoTokenizer

from signround.cli import main
from signround.inference.load import load_quantized
from signround.inference.packed_int4 import PackedInt4Linear

PROMPT = "The capital of France is"


def test_generate_streams_the_packed_models_greedy_text(tiny_model_dir, tmp_path, capsys):
    out_root = tmp_path / "out"
    assert main(["--model", str(tiny_model_dir), "--iters", "0", "--disable_opt_rtn", "--output_dir", str(out_root),
                 "--format", "auto_round", "-q"]) == 0
    folder = out_root / "tiny-w4g128-auto_round"
    capsys.readouterr()
    assert main(["generate", "--model", str(folder), "--prompt", PROMPT, "--max_new_tokens", "8", "-q"]) == 0
    captured = capsys.readouterr()
    m = re.search(r"(\d+) new tokens; prompt (\d+) tokens in [\d.]+ s; decode [\d.]+ tokens/s", captured.err)
    assert m, captured.err
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert int(m.group(2)) == ids.shape[1] and 1 <= int(m.group(1)) <= 8

    model = load_quantized(folder, dtype="bfloat16")
    assert any(isinstance(x, PackedInt4Linear) for x in model.modules())
    with torch.inference_mode():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    new = ref[0, ids.shape[1]:]
    assert len(new) == int(m.group(1))
    assert captured.out.strip() == tok.decode(new, skip_special_tokens=True).strip()


def test_generate_takes_several_prompts_as_one_batch(tiny_model_dir, tmp_path, capsys):
    """Two prompts of different lengths: each ``[i]`` block is transformers' greedy text of that prompt alone."""
    out_root = tmp_path / "out"
    assert main(["--model", str(tiny_model_dir), "--iters", "0", "--disable_opt_rtn", "--output_dir", str(out_root),
                 "--format", "auto_round", "-q"]) == 0
    folder = out_root / "tiny-w4g128-auto_round"
    prompts = [PROMPT, "Once upon a time, in a land far away, there lived"]
    capsys.readouterr()
    assert main(["generate", "--model", str(folder), "--prompt", prompts[0], "--prompt", prompts[1],
                 "--max_new_tokens", "8", "-q"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"\d+ new tokens x 2 prompts; prompt \d+ tokens", captured.err), captured.err
    parts = re.split(r"^\[(\d)\] ", captured.out, flags=re.M)  # ["", "0", text0, "1", text1]
    assert parts[0] == "" and parts[1::2] == ["0", "1"], captured.out
    tok = AutoTokenizer.from_pretrained(folder)
    model = load_quantized(folder, dtype="bfloat16")
    texts = []
    for prompt, text in zip(prompts, parts[2::2]):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        texts.append(tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True))
        assert text == texts[-1] + "\n"
    assert texts[0] != texts[1]


def test_generate_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x", "-q"]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "x", "--max_new_tokens", "0", "-q"]) == 2
    assert "max_new_tokens must be at least 1, got 0" in capsys.readouterr().err
