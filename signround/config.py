"""The run's typed configuration, resolved once from what the user gave.

Order (each step fills only what the previous left unset): the user's values, the recipe's values,
the defaults that depend on the run (a GGUF format without ``iters``: optimised RTN; calibration size
by method), then the table defaults of ``options.OPTIONS``. ``resolve_run`` is a pure function: the API
calls it when the formats are known, before planning, and nothing rewrites the result afterwards.
``RunConfig.record()`` is every resolved choice, written to ``signround.json``.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, replace
from typing import Any, Iterable

import torch

from .errors import BadInputError
from .method import Method, Optimizer, Start, method_for
from .options import CALIBRATION_DEFAULTS, GGUF_DEFAULT_ITERS, UserOptions
from .export.io import DEFAULT_SHARD_BYTES
from .recipes import recipe_values
from .sizes import parse_size
from .tune.driver import RuntimeOptions
from .tune.precision import resolve_tune_dtype
from .tune.distributed import DataParallel
from .tune.signround import SignRoundConfig

__all__ = ["RunConfig", "resolve_run", "resolve_device", "versions"]

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu; any other name must exist on this machine."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise BadInputError(f"device {device!r} is not a device name (use cpu, cuda, cuda:N or auto)") from e
    if parsed.type == "cpu":
        return "cpu"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInputError(f"device {device!r} requested but CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise BadInputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise BadInputError(f"device {device!r} is not supported (use cpu, cuda, cuda:N or auto)")


def versions() -> dict[str, str]:
    """Versions of what shapes the bytes of an output, for the run record."""
    import transformers

    from . import __version__

    return {"signround": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run does, resolved: method, tuning, calibration size and runtime."""

    method: Method
    start: Start
    tuning: SignRoundConfig
    runtime: RuntimeOptions
    nsamples: int | None  # None: the method reads no data
    seqlen: int | None
    dataset: Any
    tune_dtype_reason: str
    recipe: str
    max_shard_bytes: int = DEFAULT_SHARD_BYTES

    @property
    def optimize_rtn(self) -> bool:
        return self.start.searches

    def with_rows(self, train_rows: int) -> "RunConfig":
        """What actually ran on ``train_rows`` tuning rows: a batch larger than them is recorded as their number."""
        if not self.method.tunes or self.tuning.batch_size <= train_rows:
            return self
        logger.warning("batch_size %d is larger than the %d tuning rows; each step uses all %d (recorded as such)",
                       self.tuning.batch_size, train_rows, train_rows)
        return replace(self, tuning=replace(self.tuning, batch_size=train_rows))

    def with_parallel(self, parallel: DataParallel) -> "RunConfig":
        """The same run as one rank of a data-parallel group (a bare ``cuda`` device becomes this rank's GPU)."""
        rt = self.runtime
        return replace(self, runtime=replace(rt, parallel=parallel, device=parallel.device_for(rt.device)))

    def record(self) -> dict[str, Any]:
        """Every resolved choice, for ``signround.json`` (the same run records the same values)."""
        t, rt = self.tuning, self.runtime
        tuned = self.method.tunes
        return {
            "method": self.method.value, "start": self.start.value, "recipe": self.recipe,
            "iters": t.iters, "optimizer": t.optimizer.value if tuned else None,
            "lr": t.rounding_lr if tuned else None, "minmax_lr": t.range_lr if tuned else None,
            "batch_size": t.batch_size, "gradient_accumulate_steps": t.gradient_accumulate_steps,
            "enable_minmax_tuning": t.enable_minmax_tuning, "enable_quanted_input": t.enable_quanted_input,
            "eval_every": t.check_every if tuned else None, "early_stop": t.early_stop, "seed": t.seed,
            "nsamples": self.nsamples, "seqlen": self.seqlen,
            "runtime": {"device": rt.device, "tune_dtype": str(rt.tune_dtype).removeprefix("torch."),
                        "tune_dtype_reason": self.tune_dtype_reason, "threads": torch.get_num_threads(),
                        "low_gpu_mem_usage": rt.low_gpu_mem_usage, "enable_torch_compile": t.enable_torch_compile,
                        "low_precision_passes": rt.low_precision_passes, "world_size": rt.parallel.world_size,
                        # where activations are placed never changes a result; the default depends on free RAM
                        "max_memory": rt.max_memory if rt.max_memory is not None else "auto"},
            "max_shard_size": self.max_shard_bytes,
            "versions": versions(),
        }


def _iters(opts: UserOptions, formats: Iterable[Any]) -> int:
    if opts.is_given("iters"):
        return opts.get("iters")
    from .formats import is_gguf

    if any(is_gguf(f) for f in formats):
        return GGUF_DEFAULT_ITERS
    return opts.get("iters")


def _fit_seqlen(seqlen: int, positions: int | None, given: bool) -> int:
    """A calibration row may not be longer than the model's positions: a given seqlen is refused, a default clamped."""
    if positions is None or seqlen <= positions:
        return seqlen
    if given:
        raise BadInputError(f"seqlen {seqlen} is longer than the model's {positions} positions; pass seqlen <= {positions}")
    logger.warning("calibration rows of %d tokens would exceed the model's %d positions: using seqlen %d",
                   seqlen, positions, positions)
    return positions


def resolve_run(opts: UserOptions, formats: Iterable[Any] = (), max_positions: int | None = None) -> RunConfig:
    """The run's configuration for these formats (and a model of ``max_positions`` positions, when known).

    A BadInputError names any value that cannot work.
    """
    seqlen_given = opts.is_given("seqlen")
    recipe = opts.get("recipe")
    opts = opts.with_recipe(recipe_values(recipe))
    iters = _iters(opts, list(formats))
    method, start = method_for(iters, opts.get("disable_opt_rtn"))
    nsamples = seqlen = None
    if method.needs_data:
        default_rows, default_len = CALIBRATION_DEFAULTS[method]
        nsamples, seqlen = opts.get("nsamples") or default_rows, opts.get("seqlen") or default_len
        seqlen = _fit_seqlen(seqlen, max_positions, seqlen_given)
    tuning = SignRoundConfig(
        iters=iters, lr=opts.get("lr"), minmax_lr=opts.get("minmax_lr"), batch_size=opts.get("batch_size"),
        gradient_accumulate_steps=opts.get("gradient_accumulate_steps"),
        enable_minmax_tuning=opts.get("enable_minmax_tuning"), enable_quanted_input=opts.get("enable_quanted_input"),
        eval_every=opts.get("eval_every"), early_stop=opts.get("early_stop"), seed=opts.get("seed"),
        enable_torch_compile=opts.get("enable_torch_compile"),
        optimizer=Optimizer.ADAM if opts.get("adam") else Optimizer.SIGN,
    )
    device = resolve_device(opts.get("device"))
    tune_dtype, why = resolve_tune_dtype(opts.get("tune_dtype"), device)
    if not method.tunes:
        tune_dtype, why = torch.float32, "no tuning loop"
    runtime = RuntimeOptions(device=device, tune_dtype=tune_dtype, low_gpu_mem_usage=opts.get("low_gpu_mem_usage"),
                             forward_batch_size=opts.get("batch_size"),
                             low_precision_passes=opts.get("low_precision_passes"),
                             show_progress=opts.get("show_progress"),
                             max_memory=None if opts.get("max_memory") is None else parse_size(opts.get("max_memory")))
    return RunConfig(method, start, tuning, runtime, nsamples, seqlen, opts.get("dataset"), why, recipe,
                     parse_size(opts.get("max_shard_size")))
