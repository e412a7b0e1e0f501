"""``signround verify`` for a GGUF file: llama.cpp against our own dequantized model, every tensor against gguf-py.

Two independent checks of one ``.gguf`` file (a file, or a directory holding exactly one):

1. **tensors**: every tensor decoded by gguf-py's ``gguf.quants.dequantize`` and by our own decoder
   (``signround.quant.gguf.decode_tensor``); they must agree bit for bit. With the float model at
   hand, each quantized tensor's relative error to the float weight is reported too (a wrong layout
   gives ~1);
2. **logits**: llama.cpp runs the prompts (``Llama(logits_all=True)`` + ``eval`` + ``scores``; its
   echo-logprobs path is broken, real-loaders §1) and is compared with transformers running the
   float architecture with the weights our reader decodes from the file. llama.cpp rounds
   activations to 8 bits inside quantized matmuls, so they agree closely, not exactly
   (``GGUFTolerances``). Against the float model, KL and argmax are reported with generous bounds.

The float model is the ``source_model`` recorded in ``signround.json`` next to the file, or given.
Without it only the tensor check and a llama.cpp run (finite logits) are possible.

As for safetensors checkpoints (``verify_status.py``), the verdict is PASS only when gguf-py or
llama.cpp ran and agreed with our decoding; a file our reader cannot parse is a ``CheckpointError``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .eval.metrics import compare_logits
from .inference.layouts import CheckpointError
from .record import recorded_float_model, resolve_source
from .verify_status import OURS, LoaderStatus, Verdict, status_lines

__all__ = [
    "GGUFTolerances",
    "GGUFVerifyReport",
    "verify_gguf",
    "gguf_prompt_ids",
    "llama_cpp_logits",
    "iter_llama_cpp_logits",
    "tensor_check",
    "holds_gguf",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFTolerances:
    """Limits for a passing run. ``engine_*``: llama.cpp vs our dequantized model; ``float_*``: vs the float model."""

    # llama.cpp's 8-bit activations alone give rel ~0.1, KL ~0.01, argmax ~0.93 on SmolLM2 q4_k_m (llama.cpp's
    # own file as much as ours); a wrong bit layout gives rel ~1.
    engine_rel_max: float = 0.2  # ||l_cpp - l_ours|| / ||l_ours - mean_v(l_ours)||
    engine_kl_max: float = 0.03
    engine_argmax_min: float = 0.85
    float_kl_max: float = 1.0  # quantization error: generous, it depends on the mix
    float_argmax_min: float = 0.5
    tensor_rel_max: float = 0.5  # a quantized tensor further than this from its float weight is garbage

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"tolerance {f.name} must be >= 0, got {getattr(self, f.name)}")


@dataclass
class GGUFVerifyReport(Verdict):
    path: Path
    tokens: int
    tolerances: GGUFTolerances
    tensors: int = 0  # tensors decoded by both gguf-py and us
    tensor_mismatch: list[str] = field(default_factory=list)  # "name: type, max |diff|" where the decoders differ
    worst_tensor: tuple[str, float] = ("", 0.0)  # (name, relative error to the float weight)
    rows: list[tuple[str, str, float, float, float, bool]] = field(default_factory=list)  # (what, vs, argmax, rel, kl, ok)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    loaders: dict[str, tuple[LoaderStatus, str]] = field(default_factory=dict)  # loader -> (status, why)

    @property
    def failed(self) -> bool:
        return (bool(self.errors) or bool(self.tensor_mismatch) or not all(r[5] for r in self.rows)
                or self.worst_tensor[1] > self.tolerances.tensor_rel_max)

    @property
    def verified_by(self) -> list[str]:
        """Loaders other than ours that ran and agreed with our decoding of the file."""
        return [n for n, (status, _) in self.loaders.items() if status == LoaderStatus.AGREED]

    @property
    def ran(self) -> list[str]:
        return [n for n, (status, _) in self.loaders.items() if status not in (LoaderStatus.UNAVAILABLE,
                                                                               LoaderStatus.FAILED)]

    @property
    def unavailable(self) -> dict[str, str]:
        return {n: why for n, (status, why) in self.loaders.items() if status == LoaderStatus.UNAVAILABLE}

    def table(self, _tolerances: Any = None) -> str:
        """The report as text (the argument is accepted for the shape of ``verify.VerifyReport.table``)."""
        tol = self.tolerances
        lines = [f"{self.path} (gguf, {self.tokens} positions)"]
        status = "ok" if not self.tensor_mismatch and self.tensors else "FAIL"
        lines.append(f"tensors: {self.tensors} decoded by gguf-py and signround, "
                     f"{self.tensors - len(self.tensor_mismatch)} bit-identical  {status}")
        lines += [f"  differs: {m}" for m in self.tensor_mismatch[:10]]
        if self.worst_tensor[0]:
            ok = "ok" if self.worst_tensor[1] <= tol.tensor_rel_max else "FAIL"
            lines.append(f"worst tensor vs float: {self.worst_tensor[0]} rel {self.worst_tensor[1]:.4f}  {ok}")
        header = ("logits", "vs", "argmax", "rel", "kl", "status")
        body = [(a, b, f"{am:.4f}", f"{rel:.5f}", f"{kl:.5f}", "ok" if ok else "FAIL") for a, b, am, rel, kl, ok in self.rows]
        w = [max(len(r[i]) for r in [header, *body]) for i in range(6)]
        lines += ["  ".join(r[i].ljust(w[i]) for i in range(6)) for r in [header, *body]]
        lines += status_lines(self.loaders)
        lines += [f"ERROR: {e}" for e in self.errors] + [f"note: {n}" for n in self.notes]
        lines.append(f"tolerances: llama.cpp vs ours rel <= {tol.engine_rel_max}, kl <= {tol.engine_kl_max}, argmax >= "
                     f"{tol.engine_argmax_min}; vs float kl <= {tol.float_kl_max}, argmax >= {tol.float_argmax_min}; "
                     f"tensor rel <= {tol.tensor_rel_max}")
        lines.append("verdict: " + self.verdict)
        return "\n".join(lines)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def holds_gguf(path: "str | Path") -> bool:
    """True for a ``.gguf`` file or a directory holding one (what ``verify`` dispatches here)."""
    path = Path(path)
    return (path.is_file() and path.suffix == ".gguf") or (path.is_dir() and any(path.glob("*.gguf")))


def _gguf_file(path: "str | Path") -> Path:
    from .export.gguf.pipeline import find_gguf_file

    return find_gguf_file(path)


def iter_llama_cpp_logits(path: "str | Path", rows: torch.Tensor, n_threads: int = 1) -> Iterator[np.ndarray]:
    """llama.cpp's (T, n_vocab) float32 logits for each row of ``rows`` (n, T) token ids, one row at a time."""
    import llama_cpp

    n_ctx = int(rows.shape[1])
    llm = llama_cpp.Llama(model_path=os.fspath(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                          n_threads=n_threads, verbose=False)
    try:
        for row in rows.tolist():
            llm.reset()
            llm.eval(row)
            yield np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
    finally:
        llm.close()


def llama_cpp_logits(path: "str | Path", rows: torch.Tensor, n_threads: int = 1) -> torch.Tensor:
    """(n, T, n_vocab) float32 logits of llama.cpp for token ids ``rows`` (n, T)."""
    return torch.from_numpy(np.stack(list(iter_llama_cpp_logits(path, rows, n_threads))))


def read_file_tensors(path: "str | Path") -> dict:
    """Our reader's view of the file (``export.gguf.read_gguf_tensors``); a file it cannot parse is a CheckpointError."""
    from .export.gguf import read_gguf_tensors

    try:
        return read_gguf_tensors(path)
    except Exception as e:  # gguf-py's parser raises ValueError, IndexError... on a truncated or corrupted file
        raise CheckpointError(f"{path}: cannot read it as a GGUF file: {type(e).__name__}: {e} "
                              f"(truncated or corrupted file?)") from e


def tensor_check(path: "str | Path", float_model: torch.nn.Module | None = None,
                 stored: dict | None = None) -> tuple[int, list[str], tuple[str, float]]:
    """(tensors compared, mismatches, (worst tensor, its rel error to the float weight)) for one GGUF file."""
    import gguf

    from .formats.gguf_tensors import model_tensors
    from .quant.gguf import decode_tensor

    stored = read_file_tensors(path) if stored is None else stored
    sources = {s.gguf_name: s for s in model_tensors(float_model)} if float_model is not None else {}
    mismatch, worst = [], ("", 0.0)
    for name, (qtype, shape, data) in stored.items():
        raw = np.ascontiguousarray(data).view(np.uint8)
        theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(qtype))).reshape(-1)
        cols = int(shape[-1]) if len(shape) > 1 else int(shape[0])
        rows = int(np.prod(shape)) // cols
        ours = decode_tensor(torch.from_numpy(raw.reshape(rows, -1).copy()), qtype, (rows, cols)).reshape(-1).numpy()
        diff = float(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).max()) if ours.size else 0.0
        if ours.shape != theirs.shape or diff != 0.0:
            mismatch.append(f"{name}: {qtype.name}, max |diff| {diff:.3g}")
        src = sources.get(name)
        if src is not None and src.tensor.dim() == 2 and qtype.name not in ("F32", "F16", "BF16"):
            t = src.tensor.float()
            if src.row_permutation is not None:
                t = t[src.row_permutation]
            rel = float((torch.from_numpy(ours).reshape(t.shape) - t).norm() / t.norm().clamp_min(1e-12))
            if rel > worst[1]:
                worst = (name, rel)
    return len(stored), mismatch, worst


def gguf_prompt_ids(path: "str | Path", n_prompts: int = 4, length: int = 64, tokenizer: Any = None) -> torch.Tensor:
    """(n_prompts, length) ids of the held-out text, by ``tokenizer`` or else llama.cpp's own tokenizer of the file."""
    from .calib import heldout_text

    text = heldout_text()[: 40 * n_prompts * length]
    if tokenizer is not None:
        ids = tokenizer(text, return_tensors="pt").input_ids.flatten()
    else:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=os.fspath(_gguf_file(path)), n_ctx=8, vocab_only=True, verbose=False)
        try:
            ids = torch.tensor(llm.tokenize(text.encode(), add_bos=False, special=False))
        finally:
            llm.close()
    if ids.numel() < n_prompts * length:
        raise ValueError(f"the held-out text gives {ids.numel()} tokens, fewer than {n_prompts} x {length}")
    return ids[: n_prompts * length].reshape(n_prompts, length)


def _load_float(source: Any) -> tuple[torch.nn.Module, Any]:
    if isinstance(source, torch.nn.Module):
        return source, None
    from .model.loading import load_model

    loaded = load_model(resolve_source(source), dtype="float32")
    return loaded.model, loaded.tokenizer


def verify_gguf(path: "str | Path", float_model: "str | torch.nn.Module | None" = None, ids: torch.Tensor | None = None,
                tolerances: Any = None, n_prompts: int = 4, length: int = 64, n_threads: int = 1) -> GGUFVerifyReport:
    """Check one GGUF file (or the directory holding it) in llama.cpp and gguf-py against our own decoding.

    ``tolerances``: ``GGUFTolerances``, or ``verify.Tolerances`` (then only its float bounds are used).
    """
    import copy

    from .export.gguf import load_gguf_state_dict

    file = _gguf_file(path)
    tol = tolerances if isinstance(tolerances, GGUFTolerances) else GGUFTolerances()
    if tolerances is not None and not isinstance(tolerances, GGUFTolerances):  # verify.Tolerances: its float bounds
        tol = GGUFTolerances(float_kl_max=tolerances.float_kl_max, float_argmax_min=tolerances.float_argmax_min)
    source = float_model if float_model is not None else recorded_float_model(Path(path))
    model, tokenizer = _load_float(source) if source is not None else (None, None)
    stored = read_file_tensors(file)  # a damaged file stops here, before any report
    have_cpp = _installed("llama_cpp")
    if ids is None and have_cpp:
        ids = gguf_prompt_ids(file, n_prompts, length, tokenizer)
    report = GGUFVerifyReport(file, int(ids.numel()) if ids is not None else 0, tol)
    t0 = time.time()
    try:
        report.tensors, report.tensor_mismatch, report.worst_tensor = tensor_check(file, model, stored)
    except Exception as e:  # noqa: BLE001 - the report names any failure of the decoders
        report.errors.append(f"tensor check: {type(e).__name__}: {e}")
        report.loaders["gguf-py"] = (LoaderStatus.FAILED, f"tensor check: {type(e).__name__}: {e}")
    else:
        report.loaders[OURS] = (LoaderStatus.REFERENCE, f"{report.tensors} tensors decoded")
        report.loaders["gguf-py"] = ((LoaderStatus.DISAGREED, f"{len(report.tensor_mismatch)} tensors differ")
                                     if report.tensor_mismatch else (LoaderStatus.AGREED, "every tensor bit-identical")
                                     if report.tensors else (LoaderStatus.NOT_COMPARED, "the file holds no tensor"))
    report.seconds["tensors"] = round(time.time() - t0, 2)
    if not have_cpp:
        report.loaders["llama.cpp"] = (LoaderStatus.UNAVAILABLE, "not installed: llama_cpp (pip install -r "
                                                                  "requirements/llama-cpp.txt)")
        return report
    t0 = time.time()
    try:
        cpp = llama_cpp_logits(file, ids, n_threads)
    except Exception as e:  # noqa: BLE001 - llama.cpp may fail in any way; the report says how
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        report.errors.append(f"llama.cpp: {error}")
        report.loaders["llama.cpp"] = (LoaderStatus.FAILED, error)
        return report
    report.seconds["llama.cpp"] = round(time.time() - t0, 2)
    if not bool(torch.isfinite(cpp).all()):
        report.errors.append("llama.cpp produced non-finite logits")
        report.loaders["llama.cpp"] = (LoaderStatus.FAILED, "non-finite logits")
        return report
    if model is None:
        report.notes.append("no float model known (signround.json source_model, or pass one): logits not compared")
        report.loaders["llama.cpp"] = (LoaderStatus.NOT_COMPARED, "no float model known to run our decoding")
        return report
    ours_model = copy.deepcopy(model)
    state = load_gguf_state_dict(file, model)
    missing, unexpected = ours_model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        report.errors.append(f"state dict from the file: missing {missing[:4]}, unexpected {unexpected[:4]}")
        report.loaders["llama.cpp"] = (LoaderStatus.NOT_COMPARED, "our decoding does not fit the float model")
        return report
    with torch.no_grad():
        ours = ours_model(input_ids=ids, use_cache=False).logits.float()
        ref = model(input_ids=ids, use_cache=False).logits.float()
    am, rel, kl = compare_logits(cpp, ours)
    ok = rel <= tol.engine_rel_max and kl <= tol.engine_kl_max and am >= tol.engine_argmax_min
    report.rows.append(("llama.cpp", "signround (file decoded)", am, rel, kl, ok))
    report.loaders["llama.cpp"] = (LoaderStatus.AGREED if ok else LoaderStatus.DISAGREED, "")
    for what, logits in (("llama.cpp", cpp), ("signround (file decoded)", ours)):
        am, rel, kl = compare_logits(logits, ref)
        report.rows.append((what, "float", am, rel, kl, kl <= tol.float_kl_max and am >= tol.float_argmax_min))
    return report
