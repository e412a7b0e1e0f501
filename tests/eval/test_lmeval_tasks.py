"""Task resolution and the errors raised before any model loads (lm-eval missing, bad paths, unknown names,
a results file we did not write, a wrong model for the backend)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from signround.errors import BadInputError  # noqa: E402
from signround.eval import lmeval  # noqa: E402
from signround.eval.lmeval import check_tasks, model_target, resolve_tasks, results_path, run_lm_eval, vllm_args  # noqa: E402
from signround.options import UserOptions  # noqa: E402

TASKS = Path(__file__).resolve().parents[1] / "lmeval"


def test_local_folder_resolves_data_next_to_the_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data files must not depend on the working directory
    tasks = resolve_tasks(str(TASKS))
    assert sorted(tasks.labels()) == ["signround_mc", "signround_ppl"] and tasks.names == ()
    for cfg in tasks.configs:
        path = Path(cfg["dataset_kwargs"]["data_files"]["test"])
        assert path.is_absolute() and path.parent == TASKS and path.is_file()
    assert tasks.include == (TASKS,)


def test_a_copied_task_file_reads_its_own_data(tmp_path):
    (tmp_path / "t.yaml").write_text((TASKS / "signround_mc.yaml").read_text().replace("signround_mc", "my_mc"))
    (tmp_path / "mini_mc.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    tasks, manager = check_tasks(f"{tmp_path / 't.yaml'}")
    assert tasks.labels() == ["my_mc"]
    assert tasks.configs[0]["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "mini_mc.jsonl")
    loaded = manager.load(tasks.specs())["tasks"]  # lm-eval builds the task and reads the data
    assert [d["question"] for d in next(iter(loaded.values())).eval_docs] == ["q"]


@pytest.mark.parametrize("spec, message", [
    ("missing/dir", "task path missing/dir does not exist"),
    ("./nothing.yaml", "does not exist"),
    ("", "tasks is empty"),
])
def test_bad_task_paths_are_named(spec, message):
    with pytest.raises(BadInputError, match=message):
        resolve_tasks(spec)


def test_missing_data_file_and_non_task_yaml(tmp_path):
    (tmp_path / "a.yaml").write_text("task: a\ndataset_path: json\ndataset_kwargs: {data_files: {test: gone.jsonl}}\n")
    with pytest.raises(BadInputError, match="data file gone.jsonl not found"):
        resolve_tasks(str(tmp_path / "a.yaml"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "c.yaml").write_text("just: data\n")
    with pytest.raises(BadInputError, match="defines no task"):
        resolve_tasks(str(tmp_path / "b"))


def test_same_task_twice_is_refused():
    with pytest.raises(BadInputError, match="given twice"):
        resolve_tasks(f"{TASKS / 'signround_mc.yaml'},{TASKS}")


def test_unknown_task_name_fails_as_an_option_before_loading():
    # the option check runs when the options are read (AutoRound / CLI), before any model loads
    with pytest.raises(BadInputError, match="unknown lm-eval task.*no_such_task_xyz"):
        UserOptions({"tasks": f"no_such_task_xyz,{TASKS}"})
    assert UserOptions({"tasks": "arc_easy"}).get("tasks") == "arc_easy"  # a known name passes


def test_missing_lm_eval_is_a_clear_error(monkeypatch, tmp_path):
    real = lmeval.importlib.util.find_spec
    monkeypatch.setattr(lmeval.importlib.util, "find_spec", lambda n, *a: None if n == "lm_eval" else real(n, *a))
    with pytest.raises(BadInputError, match=r"lm-eval.*not installed.*signround\[eval\]"):
        run_lm_eval(tmp_path, str(TASKS))  # the first check, before the model's
    with pytest.raises(BadInputError, match="not installed"):
        resolve_tasks(str(TASKS))


def test_model_targets(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        model_target(tmp_path / "nope", "hf")
    with pytest.raises(BadInputError, match="no config.json"):
        model_target(tmp_path, "hf")
    with pytest.raises(BadInputError, match="holds 0"):
        model_target(tmp_path, "llamacpp")
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    assert model_target(tmp_path, "llamacpp") == tmp_path / "a.gguf"
    with pytest.raises(BadInputError, match="eval_backend llamacpp"):
        model_target(tmp_path, "hf")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(BadInputError, match=r"holds 2 \(a.gguf, b.gguf\)"):
        model_target(tmp_path, "llamacpp")
    with pytest.raises(BadInputError, match="not one of"):
        model_target(tmp_path, "onnx")


def test_results_file_never_replaces_a_foreign_file(tmp_path):
    assert results_path(tmp_path) == tmp_path / "lm_eval_results.json"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert results_path(gguf) == tmp_path / "m.gguf.lm_eval_results.json"
    (tmp_path / "lm_eval_results.json").write_text('{"mine": 1}')
    with pytest.raises(BadInputError, match="signround did not write it"):
        results_path(tmp_path)
    (tmp_path / "lm_eval_results.json").write_text(json.dumps({"signround_lm_eval": {}}))
    assert results_path(tmp_path) == tmp_path / "lm_eval_results.json"  # ours: replaced atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm_eval_results.json", "m.gguf"]  # the probe is gone


def test_vllm_missing_is_named_and_its_arguments(tmp_path, monkeypatch):
    # vLLM lives in a separate environment here: only the error and the arguments can be tested
    real = lmeval.importlib.util.find_spec
    monkeypatch.setattr(lmeval.importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BadInputError, match="vLLM is not installed"):
        run_lm_eval(tmp_path, str(TASKS), backend="vllm")
    assert not (tmp_path / "lm_eval_results.json").exists()
    args = vllm_args(tmp_path, 16, 1024, "cuda:1")
    assert args == {"pretrained": str(tmp_path), "batch_size": 16, "dtype": "auto", "max_model_len": 1024,
                    "device": "cuda:1"}
    assert "device" not in vllm_args(tmp_path, 8, None, "cuda") and "max_model_len" not in vllm_args(tmp_path, 8, None, "cpu")
