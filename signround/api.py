"""The Python API: ``AutoRound(model, scheme=..., iters=...).quantize_and_save(out, format=...)``.

A thin facade over the pipeline (load -> plan -> calibrate -> quantize -> export). The options and
their defaults are the table of ``options.py`` (the command line is generated from the same table);
everything that can be checked is checked before the model loads (option types and ranges, scheme,
recipe, device, dataset spec) or before calibration (formats, the plan, seqlen against the model's
positions, the output directories).

GGUF: ``format="gguf:q4_k_m"`` (or ``scheme="GGUF:Q4_K_M"``, whose format it then is by default)
lets llama.cpp's mix decide every tensor's type; ``iters`` left unset means 0 there (optimised RTN
with an importance matrix from the calibration data).
"""

from __future__ import annotations

import logging
import resource
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from .config import RunConfig, resolve_run
from .errors import BadInputError
from .formats import Format, is_gguf, parse_formats
from .export.registry import ExportInput, export_model, open_export
from .model.arch import arch_facts, max_positions
from .model.loading import LoadedModel, open_model
from .plan import QuantPlan, build_plan
from .record import resolve_source
from .request import QuantRequest
from .schemes import QuantScheme

if TYPE_CHECKING:
    from .autoscheme import AutoScheme
from .tune.distributed import DataParallel
from .tune.act_inputs import act_schemes, attach_quantized_inputs, check_static_needs_data
from .tune.driver import QuantizeResult, quantize_model
from .tune.resume import WorkDir, open_shared_work_dir, remove_work_dir, run_fingerprint, work_dir_for

__all__ = ["AutoRound"]

logger = logging.getLogger(__name__)


_TIMING_KEYS = ("seconds", "phase_seconds")  # per-block report fields that differ from run to run


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _train_rows(n: int) -> int:
    """Rows the tuner samples from (the rest is the fixed held-out set, ``driver._split_rows``)."""
    return n if n < 2 else n - max(1, n // 8)


class AutoRound:
    """Quantize a causal LM with SignRound (iters > 0), optimised RTN (iters 0) or plain RTN.

    ``model`` is a local directory, a hub id, a ``.gguf`` file, ``pkg:NAME`` (the .gguf inside an
    installed Python package) or an already loaded ``nn.Module`` (then pass ``tokenizer``).
    ``options`` are the names of ``signround.options.OPTIONS`` (``signround --help`` lists them with
    their defaults); an unknown name is a TypeError, a wrong type or range a BadInputError.
    """

    def __init__(self, model: "str | torch.nn.Module", tokenizer: Any = None,
                 scheme: "str | QuantScheme | dict | AutoScheme | None" = None, **options: Any) -> None:
        self.request = QuantRequest.build(scheme, options)  # every check that needs no model, before loading
        self.options = self.request.options
        self.run: RunConfig = self.request.run
        self.loaded = self._load(model, tokenizer, self.options.get("dtype"), self.options.get("show_progress"))
        self.arch = arch_facts(self.loaded.model)
        self.result: QuantizeResult | None = None
        self._plan: QuantPlan | None = None
        self.calibration_source = ""
        self.calibration_rows: int | None = None
        self._work: WorkDir | None = None  # the block checkpoints this run writes (removed after the export)
        self._act_max: dict[str, torch.Tensor] = {}  # calibrated input maxima of static-activation layers
        self._auto = None  # the AutoScheme choice (autoscheme/run.py), once made

    # -- set-up ---------------------------------------------------------------------------------
    @staticmethod
    def _load(model: Any, tokenizer: Any, dtype: Any, show_progress: bool) -> LoadedModel:
        if isinstance(model, torch.nn.Module):
            name = Path(getattr(getattr(model, "config", None), "_name_or_path", "") or "model").name or "model"
            return LoadedModel(model=model.eval(), tokenizer=tokenizer, source=name, name=name)
        if not isinstance(model, (str, Path)):
            raise TypeError(f"model must be a path, hub id or nn.Module, got {type(model).__name__}")
        return open_model(resolve_source(str(model)), dtype=dtype, show_progress=show_progress)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def scheme(self) -> QuantScheme:
        return self.request.scheme

    def formats(self, formats: "str | Iterable[str] | None" = None) -> list[Format]:
        """The requested formats; None means the scheme's own (``gguf:<mix>`` for a GGUF preset, else auto_round)."""
        return self.request.formats(formats)

    def plan(self, formats: "str | Iterable[str] | None" = None) -> QuantPlan:
        """The per-layer plan for these formats (every format rule checked), without quantizing anything."""
        fmts = parse_formats(formats) if formats else self.request.default_formats()
        return self._plan_for(fmts, resolve_run(self.options, fmts))

    def _plan_for(self, fmts: list[Format], run: RunConfig, extra: "dict | None" = None) -> QuantPlan:
        layer_config = self.options.get("layer_config")
        extra = extra if extra is not None else self._auto.layer_config if self._auto is not None else None
        if extra:  # AutoScheme's exact names, for the layers the user's layer_config leaves free
            layer_config = {**(layer_config or {}), **extra}
        return build_plan(self.model, self.arch, self.request.scheme_for(fmts),
                          layer_config=layer_config, ignore_layers=self.options.get("ignore_layers"),
                          quant_lm_head=self.options.get("quant_lm_head"), formats=fmts, has_imatrix=run.optimize_rtn)

    def _choose_scheme(self, fmts: list[Format]) -> None:
        """AutoScheme: the options checked, one sensitivity pass, the knapsack; the plan is rebuilt with the choice."""
        from .autoscheme.run import choose_scheme
        from .calib import get_calibration_data

        def calibration(nsamples: int, seqlen: int):
            positions = max_positions(self.model)
            data = get_calibration_data(self.tokenizer, self.run.dataset, nsamples=nsamples,
                                        seqlen=min(seqlen, positions or seqlen), seed=self.run.tuning.seed)
            return data.input_ids, data.attention_mask

        self._auto = choose_scheme(self.request.auto_scheme, self._plan, fmts,
                                   lambda extra: self._plan_for(fmts, self.run, extra), self.model, self.arch,
                                   calibration, (self.run.nsamples, self.run.seqlen), self.loaded.weights,
                                   self.run.runtime)
        self._plan = self._plan_for(fmts, self.run)

    def output_dirs(self, output_dir: "str | Path", formats: "str | Iterable[str] | None" = None) -> list[Path]:
        """Where each format will be written (a child of ``output_dir`` per format)."""
        return self.request.output_dirs(self.loaded.name, output_dir, formats)

    def _calibration(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.run.method.needs_data:
            return None, None
        from .calib import get_calibration_data

        data = get_calibration_data(self.tokenizer, self.run.dataset, nsamples=self.run.nsamples,
                                    seqlen=self.run.seqlen, seed=self.run.tuning.seed)
        self.calibration_source = data.source
        self.calibration_rows = int(data.input_ids.shape[0])
        logger.info("calibration: %d rows x %d tokens from %s", data.input_ids.shape[0], data.input_ids.shape[1],
                    data.source)
        return data.input_ids, data.attention_mask

    # -- the pipeline ---------------------------------------------------------------------------
    def _open_work(self, work_dir: "str | Path | None", input_ids: torch.Tensor | None,
                   mask: torch.Tensor | None) -> WorkDir | None:
        """The checkpoint directory of this run (``tune/resume.py``), when there is a block loop to checkpoint."""
        require = bool(self.options.get("resume"))
        why_not = ("no output directory is known (use quantize_and_save or save_quantized)" if work_dir is None
                   else "plain RTN has no block loop" if input_ids is None else None)
        if why_not:
            if require:
                raise BadInputError(f"resume: nothing can be resumed here: {why_not}")
            return None
        assert self._plan is not None
        parallel = self.run.runtime.parallel
        fingerprint = run_fingerprint(self.settings(), self._plan.to_dict(), self.loaded.source, input_ids, mask,
                                      parallel.world_size)
        work = open_shared_work_dir(work_dir, fingerprint, require, parallel)
        if parallel.is_main:
            logger.info("checkpointing each finished block in %s", work.path)
        return work

    def quantize(self, formats: "str | Iterable[str] | None" = None,
                 work_dir: "str | Path | None" = None) -> tuple[torch.nn.Module, QuantizeResult]:
        """Quantize the model and keep it in memory; returns it (its weights hold the dequantized codes) and the result.

        ``work_dir``: checkpoint every finished block there and continue from the last one a killed run of the
        same command left. A model opened from disk is read block by block and ends up whole in memory; to
        quantize a model larger than memory, use ``quantize_and_save``, which writes each block as it finishes.
        """
        if self.result is None:
            fmts = parse_formats(formats) if formats else self.request.default_formats()
            self._run_blocks(fmts, work_dir, keep=True)
            assert self._plan is not None
            attach_quantized_inputs(self.model, act_schemes(self._plan.quantized()), self._act_max)
        return self.model, self.result

    def _prepare(self, fmts: list[Format]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Resolve the run for these formats, plan it, read the calibration data (all before any block)."""
        self.run = resolve_run(self.options, fmts, max_positions(self.model))
        if not self.run.method.needs_data and (self.options.is_given("nsamples") or self.options.is_given("seqlen")):
            logger.info("plain RTN reads no calibration data: nsamples/seqlen are not used")  # once, not per resolve
        # Data parallel under torchrun (or an initialised process group): every rank tunes on 1/N of the rows.
        self.run = self.run.with_parallel(DataParallel.from_environment(self.run.runtime.device))
        self._plan = self._plan_for(fmts, self.run)
        if self.request.auto_scheme is not None and self._auto is None:
            self._choose_scheme(fmts)
        check_static_needs_data(act_schemes(self._plan.quantized()), self.run.method)
        logger.info("plan: %s", self._plan.summary())
        logger.debug("plan:\n%s", self._plan.table())
        logger.info("method: %s (%s start)%s; %s on %s", self.run.method.label, self.run.start.value,
                    f", {self.run.tuning.iters} iters" if self.run.method.tunes else "",
                    str(self.run.runtime.tune_dtype).removeprefix("torch."), self.run.runtime.device)
        input_ids, mask = self._calibration() if self._plan.quantized() else (None, None)
        if input_ids is not None:
            self.run = self.run.with_rows(_train_rows(input_ids.shape[0]))
        return input_ids, mask

    def _run_blocks(self, fmts: list[Format], work_dir: "str | Path | None", keep: bool,
                    sinks: "list | None" = None, on_planned: Any = None) -> None:
        """The block loop. ``keep``: the model stays in memory; else (a streamed model) each block is dropped
        once ``sinks`` have its codes. ``on_planned()`` returns the sinks once the plan is known."""
        input_ids, mask = self._prepare(fmts)
        self._work = self._open_work(work_dir, input_ids, mask)
        sinks = on_planned() if on_planned is not None else []
        t0 = time.time()
        spill = Path(work_dir) if work_dir is not None else None
        weights = replace(self.loaded.weights, keep=keep)
        self.result = quantize_model(self.model, self.arch, self._plan, input_ids, mask, self.run.tuning,
                                     start=self.run.start, runtime=self.run.runtime, work=self._work,
                                     weights=weights, sinks=sinks, spill_dir=spill, act_max=self._act_max)
        if spill is not None and spill.is_dir() and not any(spill.iterdir()) and self._work is None:
            spill.rmdir()
        logger.info("quantized %d layers in %.1f s, peak RSS %.0f MiB", len(self.result.layers), time.time() - t0,
                    _peak_rss_mib())

    def settings(self) -> dict[str, Any]:
        """Every resolved choice of this run (method, tuning, calibration actually used, runtime, versions)."""
        record = self.run.record()
        record.update(dataset=self.calibration_source or None, calibration_rows=self.calibration_rows)
        if self._auto is not None:
            record["auto_scheme"] = self._auto.record
        if self.calibration_rows is None:
            record.update(nsamples=None, seqlen=None)  # no data was read
        return record

    def _export_input(self) -> ExportInput:
        """What the writers read; settings, log and imatrix are completed once the blocks are done."""
        assert self._plan is not None
        return ExportInput(self.model, self.tokenizer, self._plan, {}, source=self.loaded.source,
                           start=self.run.start, tensors=self.loaded.weights.source,
                           max_shard_bytes=self.run.max_shard_bytes, act_max=self._act_max)

    def _complete(self, data: ExportInput) -> None:
        assert self.result is not None
        # The written log holds what the run computed (losses, best iterations, weight errors), never timings
        # or memory, so the same command on the same inputs writes the same bytes; those go to the console.
        data.settings = self.settings()
        data.log = {"blocks": {i: {k: v for k, v in b.items() if k not in _TIMING_KEYS}
                               for i, b in self.result.blocks.items()},
                    "layers": self.result.layers}
        data.imatrix = self.result.imatrix

    def _check_saved_formats(self, fmts: list[Format]) -> None:
        done = [f for f in (self._plan.formats if self._plan else []) if is_gguf(f)]
        if done != [f for f in fmts if is_gguf(f)]:
            was = done[0].value if done else "non-GGUF formats"
            raise BadInputError(f"this model was quantized for {was}; a GGUF mix fixes every tensor's type, so it "
                                f"cannot be saved as {', '.join(f.value for f in fmts)} (quantize again)")

    def _finish_work(self) -> None:
        if self._work is not None:  # exported: the checkpoints are no longer needed
            remove_work_dir(self._work)
            self._work = None

    def save_quantized(self, output_dir: "str | Path" = "tmp_signround", format: str | None = None,
                       overwrite: bool = False) -> list[Path]:
        """Write every requested format (comma separated) from the same codes; returns the directories.

        Quantizes first (streaming, as ``quantize_and_save``) when ``quantize`` was not called. An existing
        output directory is refused unless it is a previous signround output and ``overwrite``.
        Data parallel: only rank 0 writes; every rank returns the directories once they are written.
        """
        if self.result is None:
            return self.quantize_and_save(output_dir, format, overwrite)
        fmts = self.formats(format)
        targets = self.output_dirs(output_dir, fmts)
        if self.run.runtime.parallel.is_main:  # rank 0 may be writing while the others get here
            self.request.check_outputs(targets, overwrite)
        self._check_saved_formats(fmts)
        self._plan_for(fmts, self.run)  # the formats may differ from the ones checked at quantize time
        parallel = self.run.runtime.parallel
        if not parallel.is_main:
            parallel.barrier()  # rank 0 writes meanwhile
            return targets
        data = self._export_input()
        data.weights = dict(self.result.weights)
        self._complete(data)
        written = [export_model(data, fmt, target, overwrite=overwrite) for fmt, target in zip(fmts, targets)]
        self._finish_work()
        parallel.barrier()
        self._evaluate(written)
        return written

    def quantize_and_save(self, output_dir: "str | Path" = "tmp_signround", format: str | None = None,
                          overwrite: bool = False) -> list[Path]:
        """Quantize and write each format (comma separated; None: the scheme's own, see ``formats``).

        Streamed: each block is read, quantized, handed to every format's writer and dropped, so neither the
        model nor the output is ever whole in memory (``self.model`` is left without weights; use ``quantize``
        then ``save_quantized`` to keep the quantized model in memory). The directories appear complete at the
        end, or not at all.
        """
        if self.result is not None:
            return self.save_quantized(output_dir, format, overwrite)
        fmts = self.formats(format)  # an unknown format fails before any work
        targets = self.output_dirs(output_dir, fmts)
        self.request.check_outputs(targets, overwrite)
        with ExitStack() as stack:
            data: ExportInput | None = None  # made once the plan is known
            sinks: list = []

            def open_sinks() -> list:
                nonlocal data
                if self.run.runtime.parallel.is_main:  # only rank 0 writes
                    data = self._export_input()
                    sinks.extend(stack.enter_context(open_export(data, fmt, target, overwrite))
                                 for fmt, target in zip(fmts, targets))
                return sinks

            self._run_blocks(fmts, work_dir_for(targets[0]), keep=False, on_planned=open_sinks)
            if data is not None:
                self._complete(data)
                for sink in sinks:
                    sink.finish()
        self.run.runtime.parallel.barrier()  # every rank is done with the work directory
        if self.run.runtime.parallel.is_main:
            self._finish_work()
        self.run.runtime.parallel.barrier()
        self._evaluate(targets)
        return targets

    def _evaluate(self, written: list[Path]) -> None:
        """``tasks`` given: lm-eval on the first output (rank 0 only), its table printed and saved beside it."""
        if self.options.get("tasks") and self.run.runtime.parallel.is_main:
            from .eval.lmeval import evaluate_export

            evaluate_export(written, self.options, "cuda" if self.run.runtime.device.startswith("cuda") else "cpu")
