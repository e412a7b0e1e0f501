"""The Python API: ``AutoRound(model, scheme=..., iters=...).quantize_and_save(out, format=...)``.

A thin facade over the pipeline (load -> plan -> calibrate -> quantize -> export). Names and
defaults match the command line. Everything that can be checked is checked before calibration.

GGUF: ``format="gguf:q4_k_m"`` (or ``scheme="GGUF:Q4_K_M"``, whose format it then is by default)
lets llama.cpp's mix decide every tensor's type; ``iters`` left unset means 0 there (optimised RTN
with an importance matrix from the calibration data), 200 otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .formats import Format, gguf_mix, is_gguf, parse_formats
from .export.registry import ExportInput, export_dir_name, export_model
from .model.arch import arch_facts
from .model.loading import LoadedModel, load_model, resolve_dtype
from .plan import QuantPlan, build_plan
from .schemes import KEEP, PRESETS, QuantScheme, gguf_preset_mix, resolve_scheme
from .tune.driver import QuantizeResult, RuntimeOptions, quantize_model
from .tune.precision import resolve_tune_dtype
from .tune.signround import SignRoundConfig

__all__ = ["AutoRound"]

logger = logging.getLogger(__name__)

DEFAULT_ITERS = 200  # SignRound iterations per block when iters is left unset (GGUF formats: 0)
# Calibration rows x tokens when left unset. Tuning fits every weight's rounding: AutoRound's 128 x 2048.
# Optimised RTN only needs the importance matrix (mean x^2 per input column), which settles on far
# fewer tokens (llama.cpp's imatrix tool: ~100 x 512); 128 x 2048 made a q4_k_m export of SmolLM2
# take 8.8 min on 2 cores, 32 x 512 takes seconds per block.
TUNING_CALIBRATION = (128, 2048)
IMATRIX_CALIBRATION = (32, 512)


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class AutoRound:
    """Quantize a causal LM with SignRound (iters > 0), optimised RTN (iters 0) or plain RTN.

    ``model`` is a local directory, a hub id, a ``.gguf`` file, ``pkg:NAME`` (the .gguf inside an
    installed Python package) or an already loaded ``nn.Module`` (then pass ``tokenizer``).
    """

    def __init__(
        self,
        model: "str | torch.nn.Module",
        tokenizer: Any = None,
        scheme: "str | QuantScheme | Mapping[str, Any] | None" = None,
        *,
        bits: int | None = None,
        group_size: int | None = None,
        sym: bool | None = None,
        layer_config: Mapping[str, Any] | None = None,
        ignore_layers: "str | Iterable[str] | None" = None,
        quant_lm_head: bool = False,
        iters: int | None = None,
        lr: float | None = None,
        minmax_lr: float | None = None,
        nsamples: int | None = None,
        seqlen: int | None = None,
        batch_size: int = 8,
        gradient_accumulate_steps: int = 1,
        dataset: Any = None,
        seed: int = 42,
        disable_opt_rtn: bool = False,
        enable_minmax_tuning: bool = True,
        enable_quanted_input: bool = True,
        early_stop: int = 0,
        eval_every: int = 0,
        device: str = "auto",
        low_gpu_mem_usage: bool = False,
        dtype: "str | torch.dtype" = "auto",
        tune_dtype: "str | torch.dtype" = "auto",
        enable_torch_compile: bool = False,
        show_progress: bool = True,
    ) -> None:
        self.scheme = resolve_scheme("W4A16" if scheme is None else scheme, bits=bits, group_size=group_size, sym=sym)
        self.scheme_given = scheme is not None
        self.overrides = {"bits": bits, "group_size": group_size, "sym": sym}
        self.gguf_mix = gguf_preset_mix(scheme)  # "GGUF:Q4_K_M" -> "q4_k_m"
        self.iters_given = iters is not None
        iters = DEFAULT_ITERS if iters is None else iters
        self.signround = SignRoundConfig(
            iters=iters, lr=lr, minmax_lr=minmax_lr, batch_size=batch_size,
            gradient_accumulate_steps=gradient_accumulate_steps, enable_minmax_tuning=enable_minmax_tuning,
            enable_quanted_input=enable_quanted_input, eval_every=eval_every, early_stop=early_stop, seed=seed,
            enable_torch_compile=enable_torch_compile,
        )
        if iters > 0 or not disable_opt_rtn:
            if (nsamples is not None and nsamples < 1) or (seqlen is not None and seqlen < 2):
                raise ValueError(f"calibration needs nsamples >= 1 and seqlen >= 2, got nsamples={nsamples}, seqlen={seqlen}")
        dev = _pick_device(device)
        tdt = resolve_tune_dtype(tune_dtype, dev) if iters != 0 else torch.float32
        self.runtime = RuntimeOptions(device=dev, tune_dtype=tdt, low_gpu_mem_usage=low_gpu_mem_usage,
                                      forward_batch_size=batch_size, show_progress=show_progress)
        self.layer_config = dict(layer_config or {})
        self.ignore_layers = ignore_layers
        self.quant_lm_head = quant_lm_head
        self.nsamples, self.seqlen, self.dataset, self.seed = nsamples, seqlen, dataset, seed
        self.optimize_rtn = not disable_opt_rtn
        self._check_dataset()
        self.loaded = self._load(model, tokenizer, dtype)
        self.arch = arch_facts(self.loaded.model)
        self.result: QuantizeResult | None = None
        self._plan: QuantPlan | None = None
        self.calibration_source = ""

    # -- set-up ---------------------------------------------------------------------------------
    def _check_dataset(self) -> None:
        from .calib import check_dataset

        check_dataset(self.dataset)  # a spec that does not parse, or a missing file, fails before the model loads

    @staticmethod
    def _load(model: Any, tokenizer: Any, dtype: Any) -> LoadedModel:
        if isinstance(model, torch.nn.Module):
            name = Path(getattr(getattr(model, "config", None), "_name_or_path", "") or "model").name or "model"
            return LoadedModel(model=model.eval(), tokenizer=tokenizer, source=name, name=name)
        if not isinstance(model, str):
            raise TypeError(f"model must be a path, hub id or nn.Module, got {type(model).__name__}")
        if model.startswith("pkg:"):
            from .testing import package_gguf_path

            model = str(package_gguf_path(model[4:]))
        return load_model(model, dtype=dtype)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def formats(self, formats: "str | Iterable[str] | None" = None) -> list[Format]:
        """The requested formats; None means the scheme's own (``gguf:<mix>`` for a GGUF preset, else auto_round)."""
        if formats:
            return parse_formats(formats)
        return parse_formats(f"gguf:{self.gguf_mix}" if self.gguf_mix else "auto_round")

    def _scheme_for(self, fmts: list[Format]) -> QuantScheme:
        """The default scheme for these formats: a GGUF format sets the GGUF scheme of its mix."""
        gguf_fmt = next((f for f in fmts if is_gguf(f)), None)
        if gguf_fmt is None:
            if self.scheme.data_type == "gguf":
                want = f"gguf:{self.gguf_mix}" if self.gguf_mix else "a gguf:<mix> format"
                raise ValueError(f"a GGUF scheme ({self.scheme.short_name()}) can only be exported as GGUF ({want}); "
                                 f"got format {', '.join(f.value for f in fmts)}")
            return self.scheme
        mix = gguf_mix(gguf_fmt)
        if self.gguf_mix and self.gguf_mix != mix:
            raise ValueError(f"scheme GGUF:{self.gguf_mix.upper()} and format {gguf_fmt.value} name different mixes; "
                             f"use --scheme GGUF:{mix.upper()} or --format gguf:{self.gguf_mix}")
        if self.scheme_given and self.scheme.data_type != "gguf":
            logger.warning("format %s decides each tensor's GGUF type: scheme %s is ignored", gguf_fmt.value,
                           self.scheme.short_name())
        given = {k: v for k, v in self.overrides.items() if v is not None}
        if given and self.scheme.data_type != "gguf":  # (a GGUF preset warned when it was resolved)
            logger.warning("format %s fixes bits, group size and symmetry per GGUF type: the override(s) %s are "
                           "ignored", gguf_fmt.value, ", ".join(f"{k}={v}" for k, v in given.items()))
        return PRESETS.get(f"GGUF:{mix.upper()}", KEEP)  # float mixes (gguf:f16) quantize nothing

    def plan(self, formats: "str | Iterable[str] | None" = None) -> QuantPlan:
        fmts = parse_formats(formats) if formats else (self.formats() if self.gguf_mix else [])
        scheme = self._scheme_for(fmts)
        return build_plan(self.model, self.arch, scheme, layer_config=self.layer_config,
                          ignore_layers=self.ignore_layers, quant_lm_head=self.quant_lm_head, formats=fmts,
                          has_imatrix=self.optimize_rtn)

    def _settle_iters(self, fmts: list[Format]) -> None:
        """iters left unset: 0 (optimised RTN) for GGUF formats, DEFAULT_ITERS otherwise."""
        if not self.iters_given and any(is_gguf(f) for f in fmts) and self.signround.iters:
            logger.info("GGUF format without iters: optimised RTN (iters 0); pass iters > 0 to tune with SignRound")
            self.signround = dataclasses.replace(self.signround, iters=0)

    def _calibration_size(self) -> tuple[int, int]:
        """(nsamples, seqlen): what was given, else the default for tuning or for optimised RTN."""
        default = TUNING_CALIBRATION if self.signround.iters > 0 else IMATRIX_CALIBRATION
        return self.nsamples or default[0], self.seqlen or default[1]

    def _calibration(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.signround.iters == 0 and not self.optimize_rtn:
            return None, None
        from .calib import get_calibration_data

        nsamples, seqlen = self._calibration_size()
        data = get_calibration_data(self.tokenizer, self.dataset, nsamples=nsamples, seqlen=seqlen,
                                    seed=self.seed)
        self.calibration_source = data.source
        logger.info("calibration: %d rows x %d tokens from %s", data.input_ids.shape[0], data.input_ids.shape[1],
                    data.source)
        return data.input_ids, data.attention_mask

    # -- the pipeline ---------------------------------------------------------------------------
    def quantize(self, formats: "str | Iterable[str] | None" = None) -> tuple[torch.nn.Module, QuantizeResult]:
        """Quantize the model in place; returns it (its weights now hold the dequantized codes) and the result."""
        if self.result is not None:
            return self.model, self.result
        fmts = self.formats(formats) if formats or self.gguf_mix else []
        self._settle_iters(fmts)
        self._plan = self.plan(fmts)
        logger.info("plan:\n%s", self._plan.table())
        input_ids, mask = self._calibration() if self._plan.quantized() else (None, None)
        t0 = time.time()
        self.result = quantize_model(self.model, self.arch, self._plan, input_ids, mask, self.signround,
                                     optimize_rtn=self.optimize_rtn, runtime=self.runtime)
        logger.info("quantized %d layers in %.1f s, peak RSS %.0f MiB", len(self.result.weights), time.time() - t0,
                    _peak_rss_mib())
        return self.model, self.result

    def settings(self) -> dict[str, Any]:
        sr = self.signround
        nsamples, seqlen = self._calibration_size() if self.calibration_source else (None, None)  # None: no data
        return {
            "iters": sr.iters, "lr": sr.rounding_lr if sr.iters else None, "minmax_lr": sr.range_lr if sr.iters else None,
            "nsamples": nsamples, "seqlen": seqlen, "batch_size": sr.batch_size,
            "gradient_accumulate_steps": sr.gradient_accumulate_steps, "enable_minmax_tuning": sr.enable_minmax_tuning,
            "enable_quanted_input": sr.enable_quanted_input, "opt_rtn": self.optimize_rtn, "seed": self.seed,
            "dataset": self.calibration_source or None,
        }

    def save_quantized(self, output_dir: "str | Path" = "tmp_signround", format: str | None = None) -> list[Path]:
        """Write every requested format (comma separated) from the same codes; returns the directories."""
        fmts = self.formats(format)
        if self.result is None:
            self.quantize(fmts)
        else:
            done = [f for f in (self._plan.formats if self._plan else []) if is_gguf(f)]
            if done != [f for f in fmts if is_gguf(f)]:
                was = done[0].value if done else "non-GGUF formats"
                raise ValueError(f"this model was quantized for {was}; a GGUF mix fixes every tensor's type, so it "
                                 f"cannot be saved as {', '.join(f.value for f in fmts)} (quantize again)")
            self.plan(fmts)  # the formats may differ from the ones checked at quantize time
        assert self._plan is not None and self.result is not None
        log = {"seconds": round(self.result.seconds, 2), "peak_rss_mib": round(_peak_rss_mib(), 1),
               "blocks": self.result.blocks, "layers": self.result.layers}
        data = ExportInput(self.model, self.tokenizer, self._plan, self.result.weights, self.settings(),
                           self.loaded.source, log, imatrix=self.result.imatrix)
        out = []
        for fmt in fmts:
            target = Path(output_dir) / export_dir_name(self.loaded.name, self._plan, fmt)
            out.append(export_model(data, fmt, target))
        return out

    def quantize_and_save(self, output_dir: "str | Path" = "tmp_signround", format: str | None = None) -> list[Path]:
        """Quantize and write each format (comma separated; None: the scheme's own, see ``formats``)."""
        fmts = self.formats(format)  # an unknown format fails before any work
        self.quantize(fmts)
        return self.save_quantized(output_dir, ",".join(f.value for f in fmts))
