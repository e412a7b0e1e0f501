"""``signround verify``: load one exported checkpoint in every loader installed, and compare the logits.

Every loader of ``inference/third_party.py`` that reads the checkpoint's ``quant_method`` runs the
same prompts (windows of the bundled held-out text, or seeded random ids when the directory has no
tokenizer). Rows compare each loader with the reference loader (ours when it can read the
checkpoint) and, when the float model is given, with the float model (``eval.metrics.compare_logits``:
argmax agreement, relative error, mean KL).

Every loader gets a status: reference, ran and agreed, ran and disagreed, failed, or unavailable
(not installed, cannot read this checkpoint, not selected) with the reason. The verdict is PASS only
when a loader other than signround's own ran and agreed and every comparison is within
``Tolerances``; with only our loader it is NOT VERIFIED, which is not ok: our loader agreeing with
itself proves nothing about the file. A checkpoint our loader finds damaged raises its
``CheckpointError`` (exit 2) instead of giving a report.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .errors import BadInputError
from .eval.metrics import compare_logits
from .inference.checkpoint import read_config
from .inference.third_party import LOADERS, LogitsFn, checkpoint_method
from .verify_gguf import gguf_prompt_ids, holds_gguf, verify_gguf
from .verify_status import OURS, LoaderStatus, Verdict, status_lines

__all__ = ["Tolerances", "Comparison", "VerifyReport", "verify_checkpoint", "prompt_ids"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerances:
    """Limits for a passing run. Loaders of one checkpoint differ only by compute dtype (fp16/bf16 kernels)."""

    loader_rel_max: float = 0.1  # bf16 compute alone gives ~0.05 on SmolLM2-135M; a wrong layout gives ~1
    loader_kl_max: float = 0.01
    loader_argmax_min: float = 0.9
    float_kl_max: float = 1.0  # quantization error: generous, it depends on the scheme
    float_argmax_min: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"tolerance {f.name} must be >= 0, got {getattr(self, f.name)}")


@dataclass(frozen=True)
class Comparison:
    loader: str
    against: str  # another loader's name, or "float"
    argmax: float
    rel: float
    kl: float
    ok: bool


@dataclass
class VerifyReport(Verdict):
    folder: Path
    method: str
    tokens: int
    reference: str = ""  # the loader the others were compared with ("" when none ran)
    comparisons: list[Comparison] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # loader -> error message
    skipped: dict[str, str] = field(default_factory=dict)  # loader -> why it is unavailable
    seconds: dict[str, float] = field(default_factory=dict)  # loader -> load + forward time

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(not c.ok for c in self.comparisons)

    @property
    def verified_by(self) -> list[str]:
        """Loaders other than ours that ran and agreed with another loader."""
        agreed = {n for c in self.comparisons if c.against != "float" and c.ok for n in (c.loader, c.against)}
        return [n for n in self.seconds if n in agreed and n != OURS]

    @property
    def ran(self) -> list[str]:
        return list(self.seconds)

    @property
    def unavailable(self) -> dict[str, str]:
        return self.skipped

    def loader_status(self) -> dict[str, tuple[LoaderStatus, str]]:
        """Every loader: its status and, for failed and unavailable ones, why."""
        out: dict[str, tuple[LoaderStatus, str]] = {}
        for name in self.seconds:
            rows = [c for c in self.comparisons if c.loader == name and c.against != "float"]
            if name == self.reference:
                out[name] = (LoaderStatus.REFERENCE, "")
            elif not rows:
                out[name] = (LoaderStatus.NOT_COMPARED, "")
            else:
                out[name] = (LoaderStatus.AGREED if all(c.ok for c in rows) else LoaderStatus.DISAGREED, "")
        out.update({n: (LoaderStatus.FAILED, e) for n, e in self.errors.items()})
        out.update({n: (LoaderStatus.UNAVAILABLE, why) for n, why in self.skipped.items()})
        return out

    def table(self, tol: Tolerances) -> str:
        rows = [("loader", "vs", "argmax", "rel", "kl", "status")]
        for c in self.comparisons:
            rows.append((c.loader, c.against, f"{c.argmax:.4f}", f"{c.rel:.5f}", f"{c.kl:.5f}", "ok" if c.ok else "FAIL"))
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"{self.folder} ({self.method}, {self.tokens} positions)"]
        lines += ["  ".join(r[i].ljust(w[i]) for i in range(5)) + "  " + r[5] for r in rows]
        lines.insert(2, "-" * (sum(w) + 14))
        lines += status_lines(self.loader_status())
        lines.append(f"tolerances: between loaders rel <= {tol.loader_rel_max}, kl <= {tol.loader_kl_max}, argmax >= "
                     f"{tol.loader_argmax_min}; vs float kl <= {tol.float_kl_max}, argmax >= {tol.float_argmax_min}")
        if self.seconds:
            lines.append("load + forward seconds: " + ", ".join(f"{n} {t:.1f}" for n, t in self.seconds.items()))
        lines.append("verdict: " + self.verdict)
        return "\n".join(lines)


def prompt_ids(folder: Path, n_prompts: int = 4, length: int = 64, tokenizer: Any = None) -> torch.Tensor:
    """(n_prompts, length) ids: windows of the held-out text through the checkpoint's tokenizer, else random ids."""
    if holds_gguf(folder):  # a GGUF file carries its own tokenizer (verify_gguf.py)
        return gguf_prompt_ids(folder, n_prompts, length, tokenizer)
    if tokenizer is None and ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer is not None:
        from .calib import heldout_text

        ids = tokenizer(heldout_text()[: 40 * n_prompts * length], return_tensors="pt").input_ids.flatten()
        if ids.numel() >= n_prompts * length:
            return ids[: n_prompts * length].reshape(n_prompts, length)
    vocab = int(read_config(folder).get("vocab_size", 512))
    logger.info("%s has no tokenizer: using seeded random token ids (vocab %d)", folder, vocab)
    return torch.randint(0, vocab, (n_prompts, length), generator=torch.Generator().manual_seed(0))


def _float_logits(float_model: "str | torch.nn.Module", ids: torch.Tensor) -> torch.Tensor:
    if isinstance(float_model, str):  # a directory, .gguf file, pkg:NAME or hub id, loaded strictly (no random fill)
        from .model.loading import load_model
        from .record import resolve_source

        float_model = load_model(resolve_source(float_model), dtype="float32", with_tokenizer=False).model
    with torch.no_grad():
        return float_model(input_ids=ids, use_cache=False).logits.float()


def _run_loader(load: Any, folder: Path, ids: torch.Tensor) -> torch.Tensor:
    fn: LogitsFn = load(folder)
    try:
        return fn(ids)
    finally:
        del fn
        gc.collect()


def verify_checkpoint(folder: "str | Path", float_model: "str | torch.nn.Module | None" = None,
                      loaders: "list[str] | None" = None, tolerances: Tolerances = Tolerances(),
                      ids: torch.Tensor | None = None) -> VerifyReport:
    """Run every applicable installed loader (or those named in ``loaders``) and compare their logits."""
    folder = Path(folder)
    if holds_gguf(folder):  # llama.cpp and gguf-py against our own decoding of the file (verify_gguf.py)
        return verify_gguf(folder, float_model, ids, tolerances)
    method, qc = checkpoint_method(folder)
    unknown = [n for n in (loaders or []) if n not in LOADERS]
    if unknown:
        raise ValueError(f"unknown loader(s) {', '.join(unknown)}; known: {', '.join(LOADERS)}")
    if ids is None:
        ids = prompt_ids(folder)
    report = VerifyReport(folder, method or "none", int(ids.numel()))
    outputs: dict[str, torch.Tensor] = {}
    for name, loader in sorted(LOADERS.items(), key=lambda kv: kv[0] != OURS):  # ours first: it rejects damage
        if loaders is not None and name not in loaders:
            report.skipped[name] = "not selected (--loaders)"
            continue
        if method not in loader.methods:
            report.skipped[name] = f"does not read quant_method {method!r}"
            continue
        missing = loader.missing(method)
        why = f"not installed: {', '.join(missing)} (pip install {loader.pip})" if missing else loader.skip(folder, qc)
        if why:
            report.skipped[name] = why
            continue
        t0 = time.time()
        try:
            outputs[name] = _run_loader(loader.load, folder, ids)
        except BadInputError:  # our reader found the checkpoint damaged: that is the answer, not a report row
            raise
        except Exception as e:  # a third-party loader may fail in any way; the report says how
            logger.warning("loader %s failed on %s: %s: %s", name, folder, type(e).__name__, e)
            report.errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            continue
        report.seconds[name] = round(time.time() - t0, 2)
        logger.info("loader %s: %.1f s", name, report.seconds[name])
    if not outputs:
        return report
    report.reference = OURS if OURS in outputs else next(iter(outputs))
    tol = tolerances
    for name, logits in outputs.items():
        if name == report.reference:
            continue
        am, rel, kl = compare_logits(logits, outputs[report.reference])
        ok = rel <= tol.loader_rel_max and kl <= tol.loader_kl_max and am >= tol.loader_argmax_min
        report.comparisons.append(Comparison(name, report.reference, am, rel, kl, ok))
    if float_model is not None:
        ref = _float_logits(float_model, ids)
        for name, logits in outputs.items():
            am, rel, kl = compare_logits(logits, ref)
            ok = kl <= tol.float_kl_max and am >= tol.float_argmax_min
            report.comparisons.append(Comparison(name, "float", am, rel, kl, ok))
    return report
