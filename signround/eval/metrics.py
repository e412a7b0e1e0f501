"""Perplexity and mean token KL divergence of a quantized model against its float original.

KL(P_float || P_quant) per predicted token, averaged over all tokens of non-overlapping windows of
held-out text: zero when the quantized model predicts exactly like the float one, and far more
sensitive than perplexity to small degradations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = ["EvalResult", "windows", "evaluate", "perplexity"]


@dataclass
class EvalResult:
    ppl: float
    ppl_float: float | None
    kl: float | None
    tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


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
            kl += float((lp_f.exp() * (lp_f - lp)).sum())
        count += target.numel()
    return EvalResult(
        ppl=math.exp(nll / count),
        ppl_float=math.exp(nll_f / count) if float_model is not None else None,
        kl=kl / count if float_model is not None else None,
        tokens=count,
    )


def perplexity(model: torch.nn.Module, rows: torch.Tensor, batch_size: int = 1) -> float:
    return evaluate(model, rows, None, batch_size).ppl
