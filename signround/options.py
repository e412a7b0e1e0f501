"""Every user option of a quantization run, in one table: name, type, default, range and help.

The Python API (``AutoRound(model, tokenizer, scheme, **options)``) and the command line
(``signround --name value``) are both generated from ``OPTIONS``, so a default is written once.
``UserOptions`` holds what the user gave (type- and range-checked at once, before any model loads);
``config.resolve_run`` turns it into the run's typed configuration: recipe values fill what the user
left unset, then the defaults that depend on the run (GGUF formats: ``iters`` 0; calibration size by
method), then the table's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch

from .errors import BadInputError
from .method import Method
from .recipes import RECIPES
from .tune.precision import DTYPE_NAMES

__all__ = ["Option", "OPTIONS", "EVAL_OPTIONS", "UserOptions", "CALIBRATION_DEFAULTS", "GGUF_DEFAULT_ITERS", "option"]

# Calibration rows x tokens when left unset, by method. Tuning fits every weight's rounding (AutoRound's
# 128 x 2048); optimised RTN only needs the importance matrix (mean x^2 per input column), which settles
# on far fewer tokens (llama.cpp's imatrix tool: ~100 x 512). RTN reads no data.
CALIBRATION_DEFAULTS: dict[Method, tuple[int, int]] = {Method.SIGNROUND: (128, 2048), Method.OPT_RTN: (32, 512)}
GGUF_DEFAULT_ITERS = 0  # a GGUF format without iters: optimised RTN with an importance matrix, as llama.cpp


def _at_least(n: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= n else f"must be >= {n}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be positive"


def _size(v: Any) -> str | None:
    from .sizes import parse_size

    try:
        parse_size(v)
    except BadInputError as e:
        return f"is not a size: {e}"
    return None


def _one_of(*names: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in names else f"must be one of {', '.join(names)}"


_DTYPES = ("auto", *DTYPE_NAMES)
_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False", Mapping: "a dict",
               list: "a list", tuple: "a tuple", torch.Tensor: "a tensor"}


@dataclass(frozen=True)
class Option:
    """One option. ``default=None`` means "resolved by the run" (``resolved`` says how, for --help)."""

    name: str
    kind: type | tuple[type, ...]  # accepted Python types (bool is never an int here)
    default: Any
    help: str
    group: str
    check: Callable[[Any], str | None] | None = None
    resolved: str = ""  # how a None default is resolved, for the help text
    cli: str = ""  # "": --name VALUE; "true": --name sets True; "false:--flag": --flag sets False
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    flag_help: str = ""  # help of an inverted CLI switch ("false:--asym"), which says what the switch does

    def validate(self, value: Any) -> Any:
        """``value`` if it has the right type and range, else a BadInputError naming the option."""
        if value is None:
            return None
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value) if int not in kinds else value
        if not ok:
            want = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            raise BadInputError(f"{self.name} must be {want}, got {value!r} ({type(value).__name__})")
        problem = self.check(value) if self.check else None
        if problem:
            raise BadInputError(f"{self.name} {problem}, got {value!r}")
        return value

    def help_text(self) -> str:
        if self.flag_help:
            return self.flag_help
        if self.resolved:
            return f"{self.help} [{self.resolved}]"
        if self.cli.startswith("false:") or self.cli == "true" or self.default is None:
            return self.help
        return f"{self.help} [{self.default}]"


_S, _T, _R, _E = "scheme", "tuning (SignRound)", "runtime", "evaluation"


def _tasks_problem(v: Any) -> str | None:
    """lm-eval installed, task paths readable and names known: checked before the model loads."""
    from .eval.lmeval import tasks_problem

    return tasks_problem(v)
_it = f"200 ({GGUF_DEFAULT_ITERS} with a gguf format)"
_ns = " / ".join(f"{m.label}: {n}" for m, (n, _) in CALIBRATION_DEFAULTS.items())
_sl = " / ".join(f"{m.label}: {s}" for m, (_, s) in CALIBRATION_DEFAULTS.items())

OPTIONS: tuple[Option, ...] = (
    Option("bits", int, None, "override the scheme's weight bits (2-8)", _S),
    Option("group_size", int, None, "override the group size: -1 per channel, 0 per tensor, or a power of 2", _S),
    Option("sym", bool, None, "symmetric (full-range) quantization", _S, cli="false:--asym",
           flag_help="asymmetric quantization (default: full-range symmetric)"),
    Option("data_type", str, None, "override the weight data type: int, mx_fp, mx_fp_rceil, mx_int, nv_fp, fp (FP8)", _S,
           _one_of("int", "mx_fp", "mx_fp_rceil", "mx_int", "nv_fp", "fp", "float")),
    Option("act_bits", int, None, "override the activation bits (16: activations stay in float)", _S),
    Option("act_group_size", int, None, "activation group size: -1 per token, 0 per tensor, or a power of 2", _S,
           resolved="the weight group size"),
    Option("act_sym", bool, None, "symmetric activation quantization", _S, cli="false:--act_asym",
           flag_help="asymmetric activation quantization (int activations only; default: as the weights)"),
    Option("act_dynamic", bool, None, "activation scales from each input (per forward)", _S, cli="false:--act_static",
           flag_help="static activation scales: one calibrated maximum per tensor (default: the scheme's)"),
    Option("act_data_type", str, None, "activation data type (int, mx_fp, mx_fp_rceil, mx_int, nv_fp, fp)", _S,
           _one_of("int", "mx_fp", "mx_fp_rceil", "mx_int", "nv_fp", "fp"), resolved="the weight data type"),
    Option("layer_config", Mapping, None, 'per-layer schemes, JSON: {"name or pattern": "W8A16" or {"bits": 8}}',
           _S, metavar="JSON"),
    Option("ignore_layers", (str, list, tuple), None, "comma-separated layer names/substrings to keep in float", _S,
           aliases=("--fp_layers",)),
    Option("quant_lm_head", bool, False, "quantize lm_head too (not when tied to the embeddings)", _S, cli="true"),
    Option("recipe", str, "default", f"{', '.join(RECIPES)}: fills only what you leave unset", _T,
           lambda v: None if v in RECIPES else f"must be one of {', '.join(RECIPES)}"),
    Option("iters", int, 200, "tuning iterations per block; 0 = optimised RTN (plain RTN with disable_opt_rtn)", _T,
           _at_least(0), resolved=_it),
    Option("lr", float, None, "learning rate of the rounding offsets", _T, _positive, resolved="1/iters, at most 1/50"),
    Option("minmax_lr", float, None, "learning rate of the range multipliers", _T, _positive, resolved="lr"),
    Option("adam", bool, False, "tune with AdamW instead of signed gradient descent", _T, cli="true"),
    Option("nsamples", int, None, "calibration rows", _T, _at_least(1), resolved=_ns),
    Option("seqlen", int, None, "tokens per calibration row", _T, _at_least(2), resolved=_sl),
    Option("batch_size", int, 8, "rows per tuning step", _T, _at_least(1)),
    Option("gradient_accumulate_steps", int, 1, "batches per tuning step", _T, _at_least(1)),
    Option("dataset", (str, list, tuple, torch.Tensor, Mapping), None,
           "calibration data spec, e.g. 'file.jsonl:num=64,signround:bundled' (Python: also texts, token ids, a tensor)",
           _T, resolved="the bundled public-domain text"),
    Option("seed", int, 42, "random seed of the calibration sampling and tuning", _T, _at_least(0)),
    Option("disable_opt_rtn", bool, False, "plain min/max RTN start (and plain RTN with iters 0)", _T, cli="true"),
    Option("enable_minmax_tuning", bool, True, "tune the group ranges as well as the rounding", _T,
           cli="false:--disable_minmax_tuning", flag_help="tune only the rounding, not the group ranges"),
    Option("enable_quanted_input", bool, True, "tune each block on the quantized chain's inputs", _T,
           cli="false:--disable_quanted_input", flag_help="tune each block on float inputs instead of quantized ones"),
    Option("early_stop", int, 0, "stop a block after N held-out checks without improvement (0: never)", _T,
           _at_least(0)),
    Option("eval_every", int, 0, "iterations between held-out checks (0: iters/5)", _T, _at_least(0)),
    Option("device", str, "auto", "cpu, cuda, cuda:N or auto", _R),
    Option("dtype", str, "auto", "dtype to load the model in: auto, float32, bfloat16, float16", _R, _one_of(*_DTYPES)),
    Option("tune_dtype", str, "auto", "matmul precision inside the tuning loop: auto (bfloat16 on CUDA with bf16 and "
           "on CPUs with AMX, else float32), float32, bfloat16", _R, _one_of(*_DTYPES)),
    Option("low_gpu_mem_usage", bool, False, "keep cached activations on the CPU", _R, cli="true"),
    Option("max_memory", (str, int), None, "RAM the cached calibration activations may take (e.g. 8GB, 512MiB); "
           "beyond it they spill to a file next to the output", _R, _size, resolved="half the available RAM",
           metavar="SIZE"),
    Option("max_shard_size", (str, int), "5GB", "largest safetensors file written (as transformers' max_shard_size)",
           _R, _size, metavar="SIZE"),
    Option("enable_torch_compile", bool, False, "fuse the fake quantization with torch.compile", _R, cli="true"),
    Option("low_precision_passes", bool, False, "run the reference and chain passes in tune_dtype too (faster, "
           "slightly less exact)", _R, cli="true"),
    Option("resume", bool, False, "require continuing a killed run of the same command from its last finished block "
           "(it continues automatically whenever that run's checkpoint exists)", _R, cli="true"),
    Option("show_progress", bool, True, "progress bars (the CLI's -q turns them off)", _R, cli="none"),
    # AutoScheme (signround/autoscheme): the same fields as signround.AutoScheme, for the command line.
    Option("avg_bits", float, None, "AutoScheme: target average bits per weight; each layer gets one of --options "
           "(needs --options)", "AutoScheme", _positive),
    Option("options", (str, list, tuple), None, "AutoScheme: comma-separated presets to choose from, e.g. "
           "W2A16G64,W4A16,W8A16 or GGUF:Q2_K_S,GGUF:Q4_K_S,BF16 (needs --avg_bits)", "AutoScheme"),
    Option("shared_layers", (str, list, tuple), None, "AutoScheme: layers that share one option within each block, "
           "names or regexes; ',' inside a group, ';' between groups", "AutoScheme"),
    Option("ignore_scale_zp_bits", bool, False, "AutoScheme: count only the weights' bits, not scales and zero "
           "points", "AutoScheme", cli="true"),
    Option("autoscheme_rounds", int, None, "AutoScheme: sensitivity passes (default 1); each after the first "
           "re-scores with the previous choice quantized in place", "AutoScheme", _at_least(1)),
    *(_EVAL_OPTIONS := (  # lm-eval after the export (signround/eval/lmeval.py); `signround eval` takes the same rows
        Option("tasks", (str, list, tuple), None, "after the export, evaluate the first output with lm-eval on these "
               "comma-separated task names and/or local task YAML files or folders", _E, _tasks_problem),
        Option("limit", float, None, "lm-eval: at most N documents per task (a fraction if < 1)", _E, _positive),
        Option("num_fewshot", int, None, "lm-eval: few-shot examples per prompt", _E, _at_least(0),
               resolved="each task's own"),
        Option("eval_bs", int, 8, "lm-eval batch size", _E, _at_least(1)),
        Option("eval_backend", str, "hf", "lm-eval backend: hf (signround's loader), vllm, llamacpp (a GGUF output "
               "always uses llamacpp)", _E, _one_of("hf", "vllm", "llamacpp")),
        Option("eval_task_by_task", bool, False, "lm-eval: one run per task; a failing task is reported and the "
               "others still run", _E, cli="true"),
    )),
)

_BY_NAME = {o.name: o for o in OPTIONS}
EVAL_OPTIONS: tuple[Option, ...] = _EVAL_OPTIONS


def option(name: str) -> Option:
    return _BY_NAME[name]


@dataclass(frozen=True)
class UserOptions:
    """The options the user gave (None = left unset), each checked against the table on construction."""

    given: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.given) - set(_BY_NAME))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(_BY_NAME)}")
        checked = {k: _BY_NAME[k].validate(v) for k, v in self.given.items() if v is not None}
        object.__setattr__(self, "given", checked)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "UserOptions":
        return cls(dict(kwargs))

    def get(self, name: str) -> Any:
        """The given value, or the table's default (None when the run resolves it)."""
        return self.given.get(name, _BY_NAME[name].default)

    def is_given(self, name: str) -> bool:
        return name in self.given

    def with_recipe(self, values: Mapping[str, Any]) -> "UserOptions":
        """Fill what the user left unset from a recipe."""
        return UserOptions({**{k: v for k, v in values.items() if k not in self.given}, **self.given})

    def names(self) -> Iterable[str]:
        return self.given.keys()
