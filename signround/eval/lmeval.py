"""lm-eval-harness on what signround wrote: ``run_lm_eval(DIR, "task,path/to/task.yaml")``.

Why here and not ``lm_eval --model hf``: every format we write is evaluated through our own loader
(``load_quantized``), GGUF files through llama.cpp's logits (``llamacpp_lm``), and a user's offline task
is a path, not ``--include_path`` plus a name. lm-eval is optional (``pip install signround[eval]``);
every check that needs no model (lm-eval installed, task paths and names, the model file, where the
results go) runs before the model loads. Local task YAMLs may name their data files relative to
themselves (lm-eval would read them relative to the working directory): they are made absolute here.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import BadInputError

__all__ = ["EVAL_BACKENDS", "RESULTS_FILE", "EvalTasks", "require_lm_eval", "resolve_tasks", "check_tasks",
           "tasks_problem", "model_target", "results_path", "vllm_args", "run_lm_eval", "evaluate_export"]

logger = logging.getLogger(__name__)

EVAL_BACKENDS = ("hf", "vllm", "llamacpp")
RESULTS_FILE = "lm_eval_results.json"
_MARK = "signround_lm_eval"  # the key that tells a results file is ours (never overwrite anything else)
_FILE_LOADERS = ("json", "csv", "text", "parquet", "arrow")  # datasets builders that read local data_files
_INSTALL = "pip install 'signround[eval]' (or pip install lm-eval==0.4.13)"


def require_lm_eval() -> None:
    """BadInputError unless lm-eval is importable (checked before any model loads)."""
    if importlib.util.find_spec("lm_eval") is None:
        raise BadInputError(f"evaluation on tasks needs lm-eval-harness, which is not installed: {_INSTALL}")


@dataclass(frozen=True)
class EvalTasks:
    """What ``tasks`` named: lm-eval task names, and task configs read from local YAML files."""

    names: tuple[str, ...] = ()
    configs: tuple[dict, ...] = ()  # one per local task YAML, data files made absolute
    include: tuple[Path, ...] = ()  # folders of the local YAMLs (their includes, groups and templates)
    local_names: tuple[str, ...] = field(default=())  # groups defined in a local folder, loaded by name

    def specs(self) -> list:
        """What ``simple_evaluate(tasks=...)`` takes: names and config dicts."""
        return [*self.names, *self.local_names, *self.configs]

    def labels(self) -> list[str]:
        return [*self.names, *self.local_names, *(c["task"] for c in self.configs)]


def _split(tasks: "str | Iterable[str]") -> list[str]:
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out = [str(t).strip() for t in items if str(t).strip()]
    if not out:
        raise BadInputError(f"tasks is empty ({tasks!r}): give lm-eval task names or task YAML paths, comma separated")
    return out


def _is_path(item: str) -> bool:
    """A path when it looks like one (a separator, a YAML suffix, ~ or .); a bare word is a task name."""
    return os.sep in item or "/" in item or item.endswith((".yaml", ".yml")) or item.startswith(("~", "."))


def _load_yaml(path: Path) -> dict:
    """The YAML as lm-eval reads it (``include:`` merged, ``!function`` resolved next to the file)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(path, resolve_func=True)
    except Exception as e:  # noqa: BLE001 -- yaml, import and include errors all mean "this file is bad"
        raise BadInputError(f"task file {path} cannot be read by lm-eval: {type(e).__name__}: {e}") from e
    if not isinstance(cfg, dict):
        raise BadInputError(f"task file {path} is not a YAML mapping")
    return cfg


def _absolute(value: Any, base: Path, yaml_path: Path) -> Any:
    """``data_files`` (a path, a list, or split -> path/list) with relative paths made relative to ``base``."""
    if isinstance(value, dict):
        return {k: _absolute(v, base, yaml_path) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_absolute(v, base, yaml_path) for v in value]
    path = Path(os.path.expanduser(str(value)))
    path = path if path.is_absolute() else base / path
    if not any(c in str(path) for c in "*?[") and not path.exists():
        raise BadInputError(f"task file {yaml_path}: data file {value} not found (looked for {path})")
    return str(path)


def _with_absolute_data(cfg: dict, yaml_path: Path) -> dict:
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if cfg.get("dataset_path") not in _FILE_LOADERS or "data_files" not in kwargs:
        return cfg  # a hub dataset: its data_files are paths inside the dataset repository
    kwargs["data_files"] = _absolute(kwargs["data_files"], yaml_path.parent, yaml_path)
    return {**cfg, "dataset_kwargs": kwargs}


def _yaml_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def resolve_tasks(tasks: "str | Iterable[str]") -> EvalTasks:
    """Split ``tasks`` into lm-eval names and local task YAMLs (files or folders); a missing path fails, named."""
    require_lm_eval()
    names: list[str] = []
    configs: list[dict] = []
    include: list[Path] = []
    local_names: list[str] = []
    for item in _split(tasks):
        if not _is_path(item):
            names.append(item)
            continue
        path = Path(os.path.expanduser(item)).resolve()
        if not path.exists():
            raise BadInputError(f"task path {item} does not exist (give an lm-eval task name, or a task YAML file "
                                f"or a folder of them)")
        files = _yaml_files(path) if path.is_dir() else [path]
        if not files:
            raise BadInputError(f"task folder {item} holds no .yaml task file")
        found = 0
        for f in files:
            cfg = _load_yaml(f)
            if isinstance(cfg.get("task"), str) and "group" not in cfg:
                configs.append(_with_absolute_data(cfg, f))
                found += 1
            elif isinstance(cfg.get("group"), str) and path.is_file():
                local_names.append(cfg["group"])  # a group file: loaded by name from its folder
                found += 1
        if not found:
            raise BadInputError(f"task path {item} defines no task (a YAML with a 'task: NAME' key)")
        include.append(path if path.is_dir() else path.parent)
    seen: set[str] = set()
    for label in [*names, *local_names, *(c["task"] for c in configs)]:
        if label in seen:
            raise BadInputError(f"task {label} is given twice (by name or by two task files)")
        seen.add(label)
    return EvalTasks(tuple(names), tuple(configs), tuple(dict.fromkeys(include)), tuple(local_names))


def _task_manager(tasks: EvalTasks) -> Any:
    """lm-eval's TaskManager over its own tasks (only when a name needs them: indexing takes ~10 s) and ours."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in tasks.include] or None, include_defaults=bool(tasks.names))


def _check_names(tasks: EvalTasks, manager: Any) -> None:
    known = set(manager.all_tasks)
    unknown = [n for n in [*tasks.names, *tasks.local_names] if n not in known and not manager.match_tasks([n])]
    if unknown:
        raise BadInputError(f"unknown lm-eval task(s) {', '.join(unknown)} (`lm_eval ls tasks` lists the known "
                            f"ones; a local task is given by the path of its YAML file or folder)")


def check_tasks(tasks: "str | Iterable[str]") -> tuple[EvalTasks, Any]:
    """Every check of ``tasks`` that needs no model: lm-eval installed, paths, YAMLs, data files, names."""
    resolved = resolve_tasks(tasks)
    manager = _task_manager(resolved)
    _check_names(resolved, manager)
    return resolved, manager


@lru_cache(maxsize=8)
def _tasks_problem(key: tuple[str, ...]) -> str | None:
    try:
        check_tasks(list(key))
    except BadInputError as e:
        return f"is not usable: {e}"
    return None


def tasks_problem(value: Any) -> str | None:
    """The ``tasks`` option's check (options.py): None when usable, else why (cached: names take ~10 s)."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return _tasks_problem(tuple(i.strip() for i in items))


# -- the model and where its results go ----------------------------------------------------------------
def model_target(model_path: "str | Path", backend: str) -> Path:
    """The file or directory the backend loads: a directory with config.json, or the one .gguf (llamacpp)."""
    if backend not in EVAL_BACKENDS:
        raise BadInputError(f"eval_backend {backend!r} is not one of {', '.join(EVAL_BACKENDS)}")
    path = Path(model_path).expanduser()
    if not path.exists():
        raise BadInputError(f"model {model_path} does not exist")
    if backend == "llamacpp":
        if path.is_file():
            if path.suffix != ".gguf":
                raise BadInputError(f"model {model_path}: the llamacpp backend reads a .gguf file")
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise BadInputError(f"model {model_path}: the llamacpp backend needs a .gguf file or a folder holding "
                                f"exactly one; it holds {len(ggufs)}" + (f" ({', '.join(g.name for g in ggufs)})"
                                                                          if ggufs else ""))
        return ggufs[0]
    if path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf")) and not (path / "config.json").exists()):
        raise BadInputError(f"model {model_path} is a GGUF model: evaluate it with eval_backend llamacpp")
    if not (path / "config.json").is_file():
        raise BadInputError(f"model {model_path} is not a model directory (no config.json)")
    return path


def _is_ours(path: Path) -> bool:
    try:
        return isinstance(data := json.loads(path.read_text()), dict) and _MARK in data
    except (OSError, ValueError):
        return False


def results_path(target: Path, output: "str | Path | None" = None) -> Path:
    """Where the results go (``DIR/lm_eval_results.json``, or ``<file>.lm_eval_results.json`` beside a file);
    refused before any work when that is a file we did not write or a folder we cannot write."""
    path = Path(output) if output else (target / RESULTS_FILE if target.is_dir()
                                        else target.with_name(f"{target.name}.{RESULTS_FILE}"))
    if path.exists() and not (path.is_file() and _is_ours(path)):
        raise BadInputError(f"results file {path} exists and signround did not write it; it is never replaced "
                            f"(move it, or pass another output)")
    parent = path.parent
    if not parent.is_dir():
        raise BadInputError(f"results file {path}: folder {parent} does not exist")
    probe = parent / f".{path.name}.probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BadInputError(f"results file {path}: cannot write in {parent} ({e.strerror}); pass another output") from e
    return path


def _write_results(path: Path, data: dict) -> None:
    """Atomically: a temporary sibling renamed over the target (which is absent or ours)."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# -- backends -------------------------------------------------------------------------------------------
def vllm_args(target: Path, batch_size: int, max_length: int | None, device: str) -> dict[str, Any]:
    """lm-eval ``VLLM`` keyword arguments for an exported directory (vLLM reads the quantization config itself)."""
    args: dict[str, Any] = {"pretrained": str(target), "batch_size": batch_size, "dtype": "auto"}
    if max_length:
        args["max_model_len"] = max_length
    if device.startswith("cuda:"):  # one GPU, chosen by index: vLLM itself takes the first visible one
        args["device"] = device
    return args


def _check_backend(backend: str) -> None:
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BadInputError("eval_backend vllm: vLLM is not installed in this environment (pip install vllm, "
                            "or run signround where vLLM is installed); use eval_backend hf or llamacpp")
    if backend == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        raise BadInputError("eval_backend llamacpp: llama-cpp-python is not installed (pip install llama-cpp-python)")


def _build_lm(backend: str, target: Path, batch_size: int, device: str, max_length: int | None) -> Any:
    if backend == "llamacpp":
        from .llamacpp_lm import make_llamacpp_lm

        return make_llamacpp_lm(target, max_length=max_length)
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(**vllm_args(target, batch_size, max_length, device))
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from ..inference.load import load_quantized

    model = load_quantized(target, device=device)  # every format we write, and float checkpoints
    tokenizer = AutoTokenizer.from_pretrained(target)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def _merge(into: dict, part: dict) -> None:
    for key in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                "n-samples"):
        if key in part:
            into.setdefault(key, {}).update(part[key])


def _table(results: dict) -> str:
    from lm_eval.utils import make_table

    text = make_table(results) if results.get("results") else ""
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    for task, error in results.get("errors", {}).items():
        text += f"\n{task}: FAILED: {error}"
    return text.strip()


def run_lm_eval(model_path: "str | Path", tasks: "str | Sequence[str]", *, backend: str = "hf",
                limit: float | None = None, num_fewshot: int | None = None, batch_size: int = 8,
                task_by_task: bool = False, device: str = "cpu", max_length: int | None = None,
                output: "str | Path | None" = None, show: bool = True) -> dict:
    """Evaluate ``model_path`` on lm-eval ``tasks`` (names and local YAML paths); returns lm-eval's result dict.

    ``backend``: ``hf`` (``load_quantized`` in lm-eval's HFLM), ``llamacpp`` (a .gguf, or a folder holding
    one) or ``vllm``. ``task_by_task``: one evaluation per task, a failing task's error is recorded under
    ``errors`` and the others still run. The table is printed (``show``) and everything is saved as JSON
    beside the model (``results_path``).
    """
    require_lm_eval()
    target = model_target(model_path, backend)
    _check_backend(backend)
    resolved, manager = check_tasks(tasks)
    out_path = results_path(Path(model_path).expanduser(), output)  # a folder given: inside it
    import lm_eval

    t0 = time.time()
    lm = _build_lm(backend, target, batch_size, device, max_length)
    common = dict(model=lm, num_fewshot=num_fewshot, limit=limit, task_manager=manager, log_samples=False,
                  bootstrap_iters=1000)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        if task_by_task:
            for label, spec in zip(resolved.labels(), resolved.specs()):
                try:
                    _merge(results, lm_eval.simple_evaluate(tasks=[spec], **common) or {})
                except Exception as e:  # noqa: BLE001 -- isolate the task, report it, run the others
                    logger.error("task %s failed: %s: %s", label, type(e).__name__, e)
                    errors[label] = f"{type(e).__name__}: {e}"
        else:
            _merge(results, lm_eval.simple_evaluate(tasks=resolved.specs(), **common) or {})
    finally:
        if hasattr(lm, "close"):
            lm.close()
    from .. import __version__

    results[_MARK] = {"version": __version__, "model": str(target), "backend": backend, "tasks": resolved.labels(),
                      "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                      "max_length": getattr(lm, "max_length", max_length), "seconds": round(time.time() - t0, 1)}
    if errors:
        results["errors"] = errors
    _write_results(out_path, results)
    if show:
        print(_table(results))
    logger.info("lm-eval results saved in %s", out_path)
    return results


def evaluate_export(written: Sequence[Path], options: Any, device: str = "cpu") -> dict | None:
    """After an export: evaluate the first output (its .gguf with llama.cpp) when the ``tasks`` option is set."""
    tasks = options.get("tasks")
    if not tasks or not written:
        return None
    target = Path(written[0])
    backend = options.get("eval_backend")
    if any(target.glob("*.gguf")):
        backend = "llamacpp"
    return run_lm_eval(target, tasks, backend=backend, limit=options.get("limit"),
                       num_fewshot=options.get("num_fewshot"), batch_size=options.get("eval_bs"),
                       task_by_task=options.get("eval_task_by_task"), device=device)
