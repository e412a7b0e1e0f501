"""Perplexity and mean token KL divergence of a quantized model against its float original.

KL(P_float || P_quant) per predicted token, averaged over all tokens of non-overlapping windows of
held-out text: zero when the quantized model predicts exactly like the float one, and far more
sensitive than perplexity to small degradations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

__all__ = ["EvalResult", "LogitAgreement", "windows", "evaluate", "perplexity", "token_kl", "compare_logits"]


@dataclass
class EvalResult:
    ppl: float
    ppl_float: float | None
    kl: float | None
    tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


class LogitAgreement(NamedTuple):
    """How close logits are to reference logits (a tuple, so ``argmax, rel, kl = compare_logits(...)`` works)."""

    argmax: float  # fraction of positions whose top token agrees
    rel: float  # ||logits - ref|| / ||ref - mean_v(ref)||: 0 = identical, ~1 = unrelated (a wrong bit layout)
    kl: float  # mean KL(P_ref || P) in nats per position


def token_kl(log_p_ref: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(P_ref || P) at every position of (..., V) log-probabilities: a (...) tensor."""
    return (log_p_ref.exp() * (log_p_ref - log_p)).sum(-1)


def compare_logits(logits: torch.Tensor, ref: torch.Tensor) -> LogitAgreement:
    """Agreement of (..., V) logits with reference logits of the same shape, computed in float64."""
    if logits.shape != ref.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} cannot be compared with {tuple(ref.shape)}")
    a, r = logits.double(), ref.double()
    argmax = float((a.argmax(-1) == r.argmax(-1)).double().mean())
    rel = float((a - r).norm() / (r - r.mean(-1, keepdim=True)).norm().clamp_min(1e-12))
    kl = float(token_kl(torch.log_softmax(r, -1), torch.log_softmax(a, -1)).mean())
    return LogitAgreement(argmax, rel, kl)


def windows(input_ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Cut a 1-D token sequence into (n, seqlen) non-overlapping windows (the tail is dropped)."""
    ids = input_ids.flatten()
    n = ids.numel() // seqlen
    if n == 0:
        raise ValueError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].reshape(n, seqlen)


@torch.no_grad()
def _log_probs(model: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    logits = model(input_ids=rows.to(device), use_cache=False).logits
    return torch.log_softmax(logits[:, :-1].float(), dim=-1).cpu()  # (B, T-1, V): predicts tokens 1..T-1


@torch.no_grad()
def evaluate(model: torch.nn.Module, rows: torch.Tensor, float_model: torch.nn.Module | None = None,
             batch_size: int = 1) -> EvalResult:
    """Perplexity of ``model`` on ``rows`` (n, T) and, given ``float_model``, its KL divergence to it."""
    nll = nll_f = kl = 0.0
    count = 0
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start:start + batch_size]
        target = batch[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
        lp = _log_probs(model, batch)
        nll -= float(lp.gather(-1, target).sum())
        if float_model is not None:
            lp_f = _log_probs(float_model, batch)
            nll_f -= float(lp_f.gather(-1, target).sum())
            kl += float(token_kl(lp_f, lp).sum())
        count += target.numel()
    return EvalResult(
        ppl=math.exp(nll / count),
        ppl_float=math.exp(nll_f / count) if float_model is not None else None,
        kl=kl / count if float_model is not None else None,
        tokens=count,
    )


def perplexity(model: torch.nn.Module, rows: torch.Tensor, batch_size: int = 1) -> float:
    return evaluate(model, rows, None, batch_size).ppl
