"""Sensitivity of every candidate layer to every option, from ONE forward and backward of the LM loss.

First-order estimate of the loss increase (the SignRoundV2 "fast sensitivity metric", reference §8):
``score(layer, option) = sum |G * (W - Q_option(W))|`` with ``G = dL/dW`` taken once at the float
weights and ``Q_option`` the option's plain RTN quant-dequant (the layer states of ``tune/``). AutoRound
runs one forward/backward per option with the quantized weights in place; here the gradient is shared by
all options, so the pass costs one forward and one backward whatever the number of options.

Streamed block by block, as the block loop is: the hidden states entering every block are kept in
``RowStore``s (which spill to disk past the memory budget); the causal-LM loss (labels = input_ids,
padding excluded) is taken at the head; then, from the last block back, each block is read again, its
forward recomputed on its saved input with gradients on, and the incoming gradient pushed through it.
Each candidate's weight gradient is turned into its per-option scores at once and freed. Blocks run with
``functional_call`` on float32 copies of their tensors: no module is changed.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..calib.rowstore import MemoryBudget, RowStore, row_store
from ..memory import release_free_memory
from ..model.arch import ArchFacts, get_module
from ..model.capture import capture_block_args, capture_first_block_inputs, run_block
from ..model.streaming import ModelWeights, outside_modules
from ..plan import LayerPlan
from ..schemes import QuantScheme
from ..tune import fp_layer, gguf_layer  # noqa: F401  (register the FP/MX and "gguf" layer states)
from ..tune.layer import make_layer_state
from .bits import effective_scheme

__all__ = ["layer_gradients", "sensitivity", "rtn_weight"]

logger = logging.getLogger(__name__)

Visit = Callable[[LayerPlan, torch.Tensor, torch.Tensor], None]  # (layer, grad, float weight), module layout


def _float_tensors(module: torch.nn.Module, device: str, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Detached float32 copies of a module's parameters and buffers, for ``functional_call``."""
    out = {}
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if name not in skip:
            out[name] = t.detach().to(device=device, dtype=torch.float32 if t.is_floating_point() else t.dtype)
    return out


def _leaves(module: torch.nn.Module, locals_: Mapping[str, LayerPlan], device: str) -> dict[str, torch.Tensor]:
    """Float32 leaf copies (requires_grad) of the candidate weights, by parameter name inside ``module``."""
    return {f"{loc}.weight" if loc else "weight":
            module.get_submodule(loc).weight.detach().to(device=device, dtype=torch.float32).requires_grad_()
            for loc in locals_}


def _n_targets(input_ids: torch.Tensor, mask: torch.Tensor | None) -> int:
    """Tokens the loss is averaged over: every next-token label that is not padding."""
    if mask is None:
        return input_ids.shape[0] * (input_ids.shape[1] - 1)
    return int(mask[:, 1:].sum())


def _capture(model, first, input_ids, batch, budget) -> RowStore:
    store = None
    for s in range(0, input_ids.shape[0], batch):
        x = capture_first_block_inputs(model, first, input_ids[s:s + batch], batch, torch.float32)
        if store is None:
            store = row_store((input_ids.shape[0], *x.shape[1:]), torch.float32, budget, "sensitivity inputs")
        store[s:s + x.shape[0]] = x
    return store


def layer_gradients(model: torch.nn.Module, arch: ArchFacts, layers: Mapping[str, LayerPlan], input_ids: torch.Tensor,
                    mask: torch.Tensor | None, visit: Visit, weights: ModelWeights | None = None,
                    batch_size: int = 8, budget: MemoryBudget | None = None, device: str = "cpu") -> float:
    """``visit(layer, dL/dW, W)`` for every layer of ``layers`` (blocks from last to first, the head first);
    returns the loss. L is the mean next-token cross-entropy over the non-padding labels of all rows."""
    weights = weights or ModelWeights.in_memory(model)
    budget = budget or MemoryBudget.default(tempfile.gettempdir())
    blocks = get_module(model, arch.blocks)
    prefix = arch.blocks
    if not arch.final_norm:
        raise ValueError(f"AutoScheme needs the final norm of {type(model).__name__}, which signround's architecture "
                         f"table does not list")
    front = outside_modules(model, prefix)
    weights.load(model, front, mapped=not weights.keep)
    args = capture_block_args(model, blocks, input_ids[:1])
    n, n_rows = len(blocks), input_ids.shape[0]
    mask = None if mask is None or bool(mask.all()) else mask.bool()
    total = _n_targets(input_ids, mask)
    stores: list[RowStore] = []
    try:
        stores.append(_capture(model, blocks[0], input_ids, batch_size, budget))
        for i in range(n):  # forward, keeping every block's input
            weights.load(model, f"{prefix}.{i}")
            params = _float_tensors(blocks[i], device)
            a = args[i].to(device, torch.float32)
            out = stores[-1].empty_like(f"block {i + 1} inputs")
            with torch.no_grad():
                for s in range(0, n_rows, batch_size):
                    out[s:s + batch_size] = run_block(blocks[i], stores[-1][s:s + batch_size].to(device), a, params)
            stores.append(out)
            del params
            weights.drop(model, f"{prefix}.{i}")
        loss = _head_backward(model, arch, layers, input_ids, mask, stores[-1], total, batch_size, visit, device)
        grad = stores.pop()  # now holds dL/d(final hidden states)
        for i in range(n - 1, -1, -1):  # backward, block by block
            weights.load(model, f"{prefix}.{i}")
            local = {p.name[len(f"{prefix}.{i}."):]: p for p in layers.values() if p.block == i}
            leaves = _leaves(blocks[i], local, device)
            params = {**_float_tensors(blocks[i], device, skip=tuple(leaves)), **leaves}
            a = args[i].to(device, torch.float32)
            inputs = stores.pop()
            for s in range(0, n_rows, batch_size):
                h = inputs[s:s + batch_size].to(device).requires_grad_()
                with torch.enable_grad():
                    y = run_block(blocks[i], h, a, params)
                    torch.autograd.backward(y, grad[s:s + batch_size].to(device))
                grad[s:s + batch_size] = h.grad
            inputs.close()
            for loc, p in local.items():
                leaf = leaves[f"{loc}.weight"]
                visit(p, leaf.grad if leaf.grad is not None else torch.zeros_like(leaf), leaf.detach())
            del leaves, params
            weights.drop(model, f"{prefix}.{i}")
            release_free_memory()
        grad.close()
    finally:
        for s in stores:
            s.close()
        weights.drop(model, front)
    return loss


def _head_backward(model, arch, layers, input_ids, mask, hidden, total, batch_size, visit, device) -> float:
    """Loss at the head; ``hidden`` is overwritten by dL/dhidden; the lm_head's gradient is visited if a candidate."""
    norm, head = get_module(model, arch.final_norm), get_module(model, arch.lm_head)
    norm_p = _float_tensors(norm, device)
    head_plan = layers.get(arch.lm_head)
    leaves = _leaves(head, {"": head_plan}, device) if head_plan is not None else {}
    head_p = {**_float_tensors(head, device, skip=tuple(leaves)), **leaves}
    loss_sum = 0.0
    for s in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[s:s + batch_size].to(device)
        labels = ids[:, 1:].clone()
        if mask is not None:
            labels[~mask[s:s + batch_size, 1:].to(device)] = -100
        h = hidden[s:s + batch_size].to(device).requires_grad_()
        with torch.enable_grad():
            logits = functional_call(head, head_p, (functional_call(norm, norm_p, (h,)),))[:, :-1]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                   ignore_index=-100, reduction="sum") / total
            loss.backward()
        loss_sum += float(loss.detach())
        hidden[s:s + batch_size] = h.grad
    if head_plan is not None:
        leaf = leaves["weight"]
        visit(head_plan, leaf.grad, leaf.detach())
    return loss_sum


@torch.no_grad()
def rtn_weight(plan: LayerPlan, scheme: QuantScheme, weight: torch.Tensor) -> torch.Tensor:
    """The plain-RTN quant-dequant of ``weight`` (module layout) under ``scheme``, in the module layout."""
    scheme = effective_scheme(scheme, plan.shape)
    if not scheme.is_quantized:
        return weight.float()
    p = LayerPlan(plan.name, plan.shape, scheme, "autoscheme", plan.block, plan.conv1d)
    w = make_layer_state(p, plan.name, weight, optimize=False).result().dequantize().float()
    return w.t() if plan.conv1d else w


def sensitivity(model: torch.nn.Module, arch: ArchFacts, layers: Mapping[str, LayerPlan],
                options: Mapping[str, QuantScheme], input_ids: torch.Tensor, mask: torch.Tensor | None,
                weights: ModelWeights | None = None, batch_size: int = 8, spill_dir: "str | Path | None" = None,
                max_memory: int | None = None, device: str = "cpu") -> dict[str, dict[str, float]]:
    """layer -> option -> ``sum |dL/dW * (W - Q_option(W))|`` (0 for float options), from one pass."""
    scores: dict[str, dict[str, float]] = {}

    def visit(plan: LayerPlan, g: torch.Tensor, w: torch.Tensor) -> None:
        scores[plan.name] = {name: float((g * (w - rtn_weight(plan, s, w))).abs().sum()) if s.is_quantized else 0.0
                             for name, s in options.items()}

    where = Path(spill_dir or tempfile.gettempdir())
    budget = MemoryBudget.default(where) if max_memory is None else MemoryBudget(max_memory, where)
    layer_gradients(model, arch, layers, input_ids, mask, visit, weights, batch_size, budget, device)
    return scores
