"""SignRound: tune each weight's rounding and each group's range by signed gradient descent, block by block.

Paper: Cheng et al., "Optimize Weight Rounding via Signed Gradient Descent for the Quantization of
LLMs" (arXiv 2309.05516). Loss: MSE between the quantized block on quantized inputs and the float
block on float inputs. Each step moves every tunable by ``lr * sign(grad)``, lr decaying linearly to 0.

Where this differs from AutoRound (reference §2, §13), on purpose:
- the best iteration is chosen on a **fixed held-out mini-batch** (not on each step's random batch),
  and the parameters after the last step are evaluated too;
- the rounding offset is **bounded** explicitly to [-0.5, 0.5] and the range multipliers to [0.5, 1.5];
- the masked loss is normalised by the number of valid tokens;
- the starting point is optimised RTN (an importance-weighted scale search), not min/max;
- optional early stop when the held-out loss stops improving;
- the default lr is capped at 1/50 for runs shorter than 50 iterations (AutoRound: always 1/iters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..method import Optimizer
from ..options import option
from ..model.capture import BlockArgs, run_block
from .distributed import SINGLE_PROCESS, DataParallel
from .layer import LayerQuantizer

if TYPE_CHECKING:
    from ..calib.rowstore import RowStore

__all__ = ["SignRoundConfig", "BlockReport", "tune_block", "masked_mse", "IndexSampler", "autocast_context"]


SHORT_RUN_ITERS = 50  # below this many iterations the default lr stays at 1/50


def _opt(name: str):
    return option(name).default


@dataclass(frozen=True)
class SignRoundConfig:
    """The tuning loop's settings; defaults are the option table's (``options.OPTIONS``)."""

    iters: int = _opt("iters")
    lr: float | None = None  # None -> 1 / max(iters, 50): AutoRound's 1/iters, capped for short runs
    minmax_lr: float | None = None  # None -> lr
    batch_size: int = _opt("batch_size")
    gradient_accumulate_steps: int = _opt("gradient_accumulate_steps")
    enable_minmax_tuning: bool = _opt("enable_minmax_tuning")
    enable_quanted_input: bool = _opt("enable_quanted_input")
    eval_every: int = 0  # 0 -> about 5 held-out checks per block (plus the start and the end)
    early_stop: int = 0  # stop after this many checks without improvement (0: never)
    seed: int = _opt("seed")
    enable_torch_compile: bool = False  # fuse the fake quantization with torch.compile
    optimizer: Optimizer = Optimizer.SIGN  # signed gradient descent (the paper's), or AdamW

    def __post_init__(self) -> None:
        for name in ("iters", "eval_every", "early_stop"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1 or self.gradient_accumulate_steps < 1:
            raise ValueError(
                f"batch_size and gradient_accumulate_steps must be >= 1, got {self.batch_size}, "
                f"{self.gradient_accumulate_steps}"
            )
        for name in ("lr", "minmax_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")

    @property
    def rounding_lr(self) -> float:
        """1/iters as in AutoRound from 50 iterations on; 0.02 below that.

        With 1/iters the steps sum to half the rounding range whatever the length of the run; on short
        runs those few large steps overshoot (SmolLM2 W4A16, 12 iters: KL 0.325 with lr 1/12, worse than
        the optimised-RTN start at 0.315; 0.175 with lr 0.02).
        """
        return self.lr if self.lr is not None else 1.0 / max(self.iters, SHORT_RUN_ITERS)

    @property
    def range_lr(self) -> float:
        return self.minmax_lr if self.minmax_lr is not None else self.rounding_lr

    @property
    def check_every(self) -> int:
        return self.eval_every if self.eval_every > 0 else max(1, math.ceil(self.iters / 5))


@dataclass
class BlockReport:
    loss_before: float  # held-out loss at the starting point (RTN / optimised RTN)
    loss_after: float  # held-out loss of the parameters kept
    best_iter: int  # iteration whose parameters were kept (0 = the starting point)
    iters_run: int


class IndexSampler:
    """Cyclic shuffled sampling of training rows, seeded, one reshuffle per pass."""

    def __init__(self, indices: torch.Tensor, seed: int) -> None:
        self.indices = indices
        self.gen = torch.Generator().manual_seed(seed)
        self.order = self.indices[torch.randperm(len(self.indices), generator=self.gen)]
        self.pos = 0

    def take(self, n: int) -> torch.Tensor:
        n = min(n, len(self.indices))
        if self.pos + n > len(self.order):
            self.order = self.indices[torch.randperm(len(self.indices), generator=self.gen)]
            self.pos = 0
        out = self.order[self.pos:self.pos + n]
        self.pos += n
        return out


def masked_mse(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over valid tokens only. pred/ref: (B, T, H); mask: (B, T) bool or None."""
    diff = (pred.float() - ref.float()) ** 2
    if mask is None:
        return diff.mean()
    m = mask.to(diff.dtype).unsqueeze(-1)  # (B, T, 1)
    return (diff * m).sum() / (m.sum() * diff.shape[-1]).clamp(min=1)


def _overrides(states: list[LayerQuantizer]) -> dict[str, torch.Tensor]:
    return {f"{s.local_name}.weight": s.weight() for s in states}


def autocast_context(device: torch.device | str, dtype: torch.dtype | None):
    kind = torch.device(device).type
    return torch.autocast(device_type=kind, dtype=dtype, enabled=dtype is not None)


def _eval_sums(block, states, inputs, targets, block_args, mask, idx, batch_size, device,
               autocast_dtype) -> tuple[float, float]:
    """sum(loss x valid tokens) and the valid tokens (rows when unmasked) over the rows ``idx``."""
    total, count = 0.0, 0.0
    with torch.no_grad(), autocast_context(device, autocast_dtype):
        weights = _overrides(states)
        for start in range(0, len(idx), batch_size):
            rows = idx[start:start + batch_size]
            x = inputs[rows].to(device=device, dtype=torch.float32)
            out = run_block(block, x, block_args, weights)
            m = None if mask is None else mask[rows].to(device)
            n = len(rows) if m is None else float(m.sum())
            total += float(masked_mse(out, targets[rows].to(device=device, dtype=torch.float32), m)) * n
            count += n
    return total, count


def _rows_weight(rows: torch.Tensor, mask: torch.Tensor | None) -> float:
    """The valid tokens of ``rows`` in the units of ``masked_mse``'s mean (rows when unmasked: T is fixed)."""
    return float(len(rows)) if mask is None else float(mask[rows].sum())


def _optimizer_step(cfg: SignRoundConfig, rounding: list[torch.Tensor], ranges: list[torch.Tensor]):
    """``step(decay)``: one update of every tunable with lr x decay (linear decay to 0), then clear the grads.

    Signed gradient descent moves each tunable by ``lr * sign(grad)``; AdamW (AutoRound's ``enable_adam``)
    uses the same learning rates and schedule, without weight decay (the tunables are bounded instead).
    """
    groups = [(rounding, cfg.rounding_lr), (ranges, cfg.range_lr)]
    if cfg.optimizer is Optimizer.ADAM:
        params = [{"params": g, "lr": lr} for g, lr in groups if g]
        adam = torch.optim.AdamW(params, weight_decay=0.0) if params else None

        def adam_step(decay: float) -> None:
            if adam is None:
                return
            for group, (_, lr) in zip(adam.param_groups, [g for g in groups if g[0]]):
                group["lr"] = lr * decay
            adam.step()
            adam.zero_grad(set_to_none=True)

        return adam_step

    @torch.no_grad()
    def sign_step(decay: float) -> None:
        for group, lr in groups:
            for t in group:
                if t.grad is not None:
                    t.add_(torch.sign(t.grad), alpha=-lr * decay)
                    t.grad = None

    return sign_step


def tune_block(
    block: torch.nn.Module,
    states: list[LayerQuantizer],
    inputs: "torch.Tensor | RowStore",
    targets: "torch.Tensor | RowStore",
    block_args: BlockArgs,
    mask: torch.Tensor | None,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    cfg: SignRoundConfig,
    device: torch.device | str = "cpu",
    on_step=None,
    autocast_dtype: torch.dtype | None = None,
    parallel: DataParallel = SINGLE_PROCESS,
    n_rows: int | None = None,
) -> BlockReport:
    """Tune the states of one block in place and leave them at the best held-out parameters.

    inputs/targets: (N, T, H) cached rows (tensors or ``RowStore``s in any dtype, read per batch and run in
    float32), mask: (N, T) bool or None.
    ``autocast_dtype`` (e.g. bfloat16) runs the block's matmuls in lower precision; the tunables, the
    fake quantization and the loss stay float32.

    Data parallel (``parallel.active``): inputs/targets/mask hold only this rank's shard
    (``parallel.shard``) of the ``n_rows`` rows, while train_idx/val_idx are global indices; every rank
    draws the same batches, runs the rows it holds with its loss weighted by its share of the batch's
    valid tokens, and sums the gradients over the ranks before each step, so all ranks take the
    1-process step; held-out losses are reduced over the ranks.
    """
    if parallel.active and n_rows is None:
        raise ValueError("data-parallel tuning needs n_rows, the number of rows over all ranks")
    n_rows = inputs.shape[0] if n_rows is None else n_rows
    for s in states:
        s.enable_tuning(cfg.enable_minmax_tuning, cfg.enable_torch_compile)
    rounding = [t for s in states for t in s.tunables()[0]]
    ranges = [t for s in states for t in s.tunables()[1]]
    sampler = IndexSampler(train_idx, cfg.seed)
    bs, gas = cfg.batch_size, cfg.gradient_accumulate_steps

    local_val = parallel.local_rows(val_idx, n_rows)

    def evaluate() -> float:
        total, count = _eval_sums(block, states, inputs, targets, block_args, mask, local_val, bs, device,
                                  autocast_dtype)
        return parallel.reduce_loss(total, count)

    best = evaluate()
    report = BlockReport(loss_before=best, loss_after=best, best_iter=0, iters_run=0)
    best_snap = [s.snapshot() for s in states]
    step = _optimizer_step(cfg, rounding, ranges)
    stale = 0
    for it in range(cfg.iters):
        batches = [parallel.local_rows(sampler.take(bs), n_rows) for _ in range(gas)]
        shares = parallel.batch_shares([_rows_weight(rows, mask) for rows in batches])
        for rows, share in zip(batches, shares):
            if len(rows) == 0:
                continue
            x = inputs[rows].to(device=device, dtype=torch.float32)
            m = None if mask is None else mask[rows].to(device)
            with autocast_context(device, autocast_dtype):
                out = run_block(block, x, block_args, _overrides(states))
            loss = masked_mse(out, targets[rows].to(device=device, dtype=torch.float32), m)
            (loss * share if parallel.active else loss).backward()
        parallel.all_reduce_grads(rounding + ranges)
        step(1.0 - it / cfg.iters)
        for s in states:
            s.clamp_()
        report.iters_run = it + 1
        if on_step is not None:
            on_step(it + 1)
        if (it + 1) % cfg.check_every == 0 or it + 1 == cfg.iters:
            current = evaluate()
            if current < best:
                best, stale = current, 0
                best_snap = [s.snapshot() for s in states]
                report.best_iter = it + 1
            else:
                stale += 1
                if cfg.early_stop and stale >= cfg.early_stop:
                    break
    for s, snap in zip(states, best_snap):
        s.restore(snap)
    report.loss_after = best
    return report
