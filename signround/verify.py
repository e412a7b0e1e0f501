"""``signround verify``: load one exported checkpoint in every loader installed, and compare the logits.

Every loader of ``inference/third_party.py`` that reads the checkpoint's ``quant_method`` runs the
same prompts (windows of the bundled held-out text, or seeded random ids when the directory has no
tokenizer). Rows compare each loader with the reference loader (ours when it can read the
checkpoint) and, when the float model is known (``signround.json``'s ``source_model`` or an explicit
one), with the float model:

- ``argmax``: fraction of positions whose top token agrees;
- ``rel``: ``||logits - ref|| / ||ref - mean_v(ref)||`` (0 = identical; a wrong bit layout gives ~1);
- ``kl``: mean KL(P_ref || P_loader) in nats per position.

The run fails (``VerifyReport.ok`` false, exit status 1) when a loader errors, or a comparison is
beyond ``Tolerances``. Loaders that are not installed or have a known limit for this checkpoint are
listed as skipped with the reason, and never fail the run.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .inference.third_party import LOADERS, LogitsFn, checkpoint_method
from .verify_gguf import gguf_prompt_ids, holds_gguf, verify_gguf

__all__ = ["Tolerances", "Comparison", "VerifyReport", "verify_checkpoint", "compare_logits", "prompt_ids"]

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
class VerifyReport:
    folder: Path
    method: str
    tokens: int
    comparisons: list[Comparison] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # loader -> error message
    skipped: dict[str, str] = field(default_factory=dict)  # loader -> reason
    seconds: dict[str, float] = field(default_factory=dict)  # loader -> load + forward time

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.seconds) and all(c.ok for c in self.comparisons)

    def table(self, tol: Tolerances) -> str:
        rows = [("loader", "vs", "argmax", "rel", "kl", "status")]
        for c in self.comparisons:
            rows.append((c.loader, c.against, f"{c.argmax:.4f}", f"{c.rel:.5f}", f"{c.kl:.5f}", "ok" if c.ok else "FAIL"))
        for name, err in self.errors.items():
            rows.append((name, "-", "-", "-", "-", f"ERROR: {err}"))
        for name, why in self.skipped.items():
            rows.append((name, "-", "-", "-", "-", f"skipped: {why}"))
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"{self.folder} ({self.method}, {self.tokens} positions)"]
        lines += ["  ".join(r[i].ljust(w[i]) for i in range(5)) + "  " + r[5] for r in rows]
        lines.insert(2, "-" * (sum(w) + 14))
        lines.append(f"tolerances: between loaders rel <= {tol.loader_rel_max}, kl <= {tol.loader_kl_max}, argmax >= "
                     f"{tol.loader_argmax_min}; vs float kl <= {tol.float_kl_max}, argmax >= {tol.float_argmax_min}")
        if self.seconds:
            lines.append("load + forward seconds: " + ", ".join(f"{n} {t:.1f}" for n, t in self.seconds.items()))
        if not self.seconds and not self.errors:
            lines.append(f"no installed loader reads quant_method {self.method!r}")
        lines.append("verdict: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def compare_logits(logits: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """(argmax agreement, relative error, mean KL(P_ref || P)) of (B, T, V) logits against a reference."""
    if logits.shape != ref.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} cannot be compared with {tuple(ref.shape)}")
    a, r = logits.double(), ref.double()
    argmax = float((a.argmax(-1) == r.argmax(-1)).double().mean())
    rel = float((a - r).norm() / (r - r.mean(-1, keepdim=True)).norm().clamp_min(1e-12))
    lp, lr = torch.log_softmax(a, -1), torch.log_softmax(r, -1)
    kl = float((lr.exp() * (lr - lp)).sum(-1).mean())
    return argmax, rel, kl


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
    vocab = int(json.loads((folder / "config.json").read_text()).get("vocab_size", 512))
    logger.info("%s has no tokenizer: using seeded random token ids (vocab %d)", folder, vocab)
    return torch.randint(0, vocab, (n_prompts, length), generator=torch.Generator().manual_seed(0))


def _float_logits(float_model: "str | torch.nn.Module", ids: torch.Tensor) -> torch.Tensor:
    if isinstance(float_model, str) and Path(float_model).is_dir():
        from transformers import AutoModelForCausalLM

        float_model = AutoModelForCausalLM.from_pretrained(float_model, dtype=torch.float32).eval()
    elif isinstance(float_model, str):  # a .gguf file, pkg:NAME or a hub id
        from .model.loading import load_model

        source = float_model
        if source.startswith("pkg:"):
            from .testing import package_gguf_path

            source = str(package_gguf_path(source[4:]))
        float_model = load_model(source, dtype="float32").model
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
    for name, loader in LOADERS.items():
        if loaders is not None and name not in loaders:
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
        except Exception as e:  # a third-party loader may fail in any way; the report says how
            logger.warning("loader %s failed on %s: %s: %s", name, folder, type(e).__name__, e)
            report.errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            continue
        report.seconds[name] = round(time.time() - t0, 2)
        logger.info("loader %s: %.1f s", name, report.seconds[name])
    if not outputs:
        return report
    ref_name = "signround" if "signround" in outputs else next(iter(outputs))
    tol = tolerances
    for name, logits in outputs.items():
        if name == ref_name:
            continue
        am, rel, kl = compare_logits(logits, outputs[ref_name])
        ok = rel <= tol.loader_rel_max and kl <= tol.loader_kl_max and am >= tol.loader_argmax_min
        report.comparisons.append(Comparison(name, ref_name, am, rel, kl, ok))
    if float_model is not None:
        ref = _float_logits(float_model, ids)
        for name, logits in outputs.items():
            am, rel, kl = compare_logits(logits, ref)
            ok = kl <= tol.float_kl_max and am >= tol.float_argmax_min
            report.comparisons.append(Comparison(name, "float", am, rel, kl, ok))
    return report
