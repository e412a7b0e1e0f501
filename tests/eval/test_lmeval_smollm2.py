"""lm-eval offline on the shipped local tasks (tests/lmeval) for SmolLM2: the float directory through HF, our
auto_round and GPTQ W4 outputs through ``load_quantized``, and GGUF files through llama.cpp; they agree with
the float run within what 4-bit RTN costs (bounds measured 2026-12-03, see docs/README_eval.md)."""

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from signround import AutoRound  # noqa: E402
from signround.eval.lmeval import run_lm_eval  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.interop]

TASKS = str(Path(__file__).resolve().parents[1] / "lmeval")
MC_SLACK = 3 / 16  # at most three questions of sixteen
BPB_SAME_WEIGHTS = 0.005  # the same weights in llama.cpp and torch (measured 0.0008)
BPB_W4 = 0.2  # what plain 4-bit RTN costs in bits per byte (measured: W4 g128 +0.123, gguf q4_0 +0.105)


def _numbers(res):
    r = res["results"]
    return r["signround_mc"]["acc,none"], r["signround_ppl"]["bits_per_byte,none"]


@pytest.fixture(scope="module")
def float_run(smollm2_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("float") / "smollm2"
    shutil.copytree(smollm2_dir, folder)  # the results are written beside the model: not into the shared cache
    return _numbers(run_lm_eval(folder, TASKS, show=False))


@pytest.fixture(scope="module")
def w4_outputs(smollm2_dir, tmp_path_factory):
    """auto_round + GPTQ W4 by plain RTN; tasks= makes quantize_and_save evaluate the first (auto_round) output."""
    ar = AutoRound(str(smollm2_dir), scheme="W4A16", iters=0, disable_opt_rtn=True, show_progress=False,
                   tasks=TASKS, eval_bs=8)
    return ar.quantize_and_save(tmp_path_factory.mktemp("w4"), format="auto_round,auto_gptq")


def test_auto_round_output_evaluated_after_export(float_run, w4_outputs):
    saved = json.loads((w4_outputs[0] / "lm_eval_results.json").read_text())
    assert saved["signround_lm_eval"]["backend"] == "hf"
    acc, bpb = _numbers(saved)
    assert abs(acc - float_run[0]) <= MC_SLACK and 0 <= bpb - float_run[1] < BPB_W4, (saved["results"], float_run)


def test_gptq_output_through_our_loader(float_run, w4_outputs):
    acc, bpb = _numbers(run_lm_eval(w4_outputs[1], TASKS, show=False))
    assert abs(acc - float_run[0]) <= MC_SLACK and 0 <= bpb - float_run[1] < BPB_W4, ((acc, bpb), float_run)


def test_source_gguf_in_llama_cpp_equals_the_float_directory(float_run, tmp_path):
    from signround.testing import smollm2_gguf_path

    # the float directory is this Q4_1 GGUF dequantized: the same weights, so the same numbers
    res = run_lm_eval(smollm2_gguf_path(), TASKS, backend="llamacpp", output=tmp_path / "r.json", show=False)
    acc, bpb = _numbers(res)
    assert acc == float_run[0] and abs(bpb - float_run[1]) < BPB_SAME_WEIGHTS, ((acc, bpb), float_run)


def test_gguf_output_evaluated_with_llama_cpp(float_run, smollm2_dir, tmp_path):
    ar = AutoRound(str(smollm2_dir), iters=0, disable_opt_rtn=True, show_progress=False, tasks=TASKS,
                   eval_backend="hf")  # a GGUF output is evaluated with llama.cpp whatever the backend
    (out,) = ar.quantize_and_save(tmp_path, format="gguf:q4_0")
    saved = json.loads((out / "lm_eval_results.json").read_text())
    assert saved["signround_lm_eval"]["backend"] == "llamacpp"
    acc, bpb = _numbers(saved)
    assert abs(acc - float_run[0]) <= MC_SLACK and 0 <= bpb - float_run[1] < BPB_W4, (saved["results"], float_run)


def test_task_by_task_reports_a_failing_task_and_runs_the_others(w4_outputs, tmp_path):
    bad = tmp_path / "broken.yaml"  # parses, but names a split the data lacks: lm-eval fails when it builds it
    bad.write_text((Path(TASKS) / "signround_mc.yaml").read_text().replace("signround_mc", "broken_mc")
                   .replace("mini_mc.jsonl", str(Path(TASKS) / "mini_mc.jsonl")).replace("test_split: test", "test_split: no_such_split"))
    res = run_lm_eval(w4_outputs[0], f"{bad},{Path(TASKS) / 'signround_mc.yaml'}", task_by_task=True, limit=4,
                      output=tmp_path / "r.json", show=False)
    assert list(res["errors"]) == ["broken_mc"] and res["results"]["signround_mc"]["acc,none"] >= 0.5
    assert json.loads((tmp_path / "r.json").read_text())["errors"] == res["errors"]
