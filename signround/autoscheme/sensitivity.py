"""Sensitivity of every candidate layer to every option, from ONE forward and backward of the LM loss.

Second-order (empirical-Fisher) estimate of the damage: ``score(layer, option) = n/2 * sum_t (g_t . d_t)^2``
over the n calibration tokens, with ``d_t = (Q_option(W) - W) x_t`` the layer's output error at token t,
``g_t = dL/d(layer output)`` there and ``Q_option`` the option's plain RTN quant-dequant (the layer states of
``tune/``). AutoRound's first-order ``sum |dL/dW * (W - Q(W))|`` (reference §8) under-predicts 2-bit damage.
AutoRound runs one forward/backward per option with the quantized weights in place; here forward hooks hand
each candidate's input and output gradient to the scorer during the one backward, so every option costs one
extra matmul per layer, not a model pass.

Streamed block by block, as the block loop is: the hidden states entering every block are kept in
``RowStore``s (which spill to disk past the memory budget); the causal-LM loss (labels = input_ids,
padding excluded) is taken at the head; then, from the last block back, each block is read again, its
forward recomputed on its saved input with gradients on, and the incoming gradient pushed through it.
Each candidate's per-option sums are complete when its block is done. Blocks run with
``functional_call`` on float32 copies of their tensors: no module is changed.

Re-linearization (``current``): the pass can run with a plan's RTN weights in place of the float ones, so that
each layer's input and output gradient are those of the quantized model (the damage of a later layer then
includes what earlier 2-bit layers did to its input). The option errors ``d_t`` stay relative to the float weight.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Mapping, Protocol

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

__all__ = ["layer_gradients", "sensitivity", "sensitivity_terms", "rtn_weight", "Probe", "Terms"]

logger = logging.getLogger(__name__)

class Probe(Protocol):
    """What the streamed backward reports, per candidate layer (weights in the module layout)."""

    def start(self, plan: LayerPlan, weight: torch.Tensor) -> None:
        """Before the backward of the layer's block (or the head): its float weight."""

    def tokens(self, plan: LayerPlan, x: torch.Tensor, g: torch.Tensor) -> None:
        """Each batch: the layer input ``x`` (tokens x in) and ``g = dL/d(layer output)`` (tokens x out)."""

    def finish(self, plan: LayerPlan, grad: torch.Tensor, weight: torch.Tensor) -> None:
        """After the backward: ``dL/dW`` and the float weight."""


@contextmanager
def _taps(module: torch.nn.Module, locals_: Mapping[str, LayerPlan], probe: Probe):
    """Forward hooks (removed on exit) that hand each candidate's input and output gradient to ``probe.tokens``."""
    handles = []

    def hook(plan):
        def fwd(_m, args, out):
            if torch.is_grad_enabled() and out.requires_grad:
                x = args[0].detach()
                out.register_hook(lambda g: probe.tokens(plan, x.reshape(-1, x.shape[-1]),
                                                         g.detach().reshape(-1, g.shape[-1])))
        return fwd

    try:
        for loc, plan in locals_.items():
            handles.append(module.get_submodule(loc).register_forward_hook(hook(plan)))
        yield
    finally:
        for h in handles:
            h.remove()


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


def _in_place(module: torch.nn.Module, locals_: Mapping[str, LayerPlan], current: Mapping[str, QuantScheme],
              device: str) -> dict[str, torch.Tensor]:
    """The RTN weights of ``current``'s layers among ``locals_``, by parameter name inside ``module``."""
    out = {}
    for loc, p in locals_.items():
        if p.name in current:
            w = module.get_submodule(loc).weight.detach().to(device=device, dtype=torch.float32)
            out[f"{loc}.weight" if loc else "weight"] = rtn_weight(p, current[p.name], w)
    return out


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
                    mask: torch.Tensor | None, probe: Probe, weights: ModelWeights | None = None,
                    batch_size: int = 8, budget: MemoryBudget | None = None, device: str = "cpu",
                    current: Mapping[str, QuantScheme] | None = None) -> float:
    """``probe`` sees every layer of ``layers`` (blocks from last to first, the head first); returns the loss. L is the mean next-token cross-entropy over the non-padding labels of all rows.
    ``current`` (layer -> scheme): those layers run with their RTN weights in place (re-linearization); the
    probe still gets the float weights."""
    current = current or {}
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
            local = {p.name[len(f"{prefix}.{i}."):]: p for p in layers.values() if p.block == i}
            params = {**_float_tensors(blocks[i], device), **_in_place(blocks[i], local, current, device)}
            a = args[i].to(device, torch.float32)
            out = stores[-1].empty_like(f"block {i + 1} inputs")
            with torch.no_grad():
                for s in range(0, n_rows, batch_size):
                    out[s:s + batch_size] = run_block(blocks[i], stores[-1][s:s + batch_size].to(device), a, params)
            stores.append(out)
            del params
            weights.drop(model, f"{prefix}.{i}")
        loss = _head_backward(model, arch, layers, input_ids, mask, stores[-1], total, batch_size, probe, device,
                              current)
        grad = stores.pop()  # now holds dL/d(final hidden states)
        for i in range(n - 1, -1, -1):  # backward, block by block
            weights.load(model, f"{prefix}.{i}")
            local = {p.name[len(f"{prefix}.{i}."):]: p for p in layers.values() if p.block == i}
            floats = _leaves(blocks[i], local, device)
            leaves = {**floats, **{k: w.requires_grad_() for k, w in _in_place(blocks[i], local, current, device).items()}}
            params = {**_float_tensors(blocks[i], device, skip=tuple(leaves)), **leaves}
            a = args[i].to(device, torch.float32)
            inputs = stores.pop()
            for loc, p in local.items():
                probe.start(p, floats[f"{loc}.weight"].detach())
            with _taps(blocks[i], local, probe):
                for s in range(0, n_rows, batch_size):
                    h = inputs[s:s + batch_size].to(device).requires_grad_()
                    with torch.enable_grad():
                        y = run_block(blocks[i], h, a, params)
                        torch.autograd.backward(y, grad[s:s + batch_size].to(device))
                    grad[s:s + batch_size] = h.grad
            inputs.close()
            for loc, p in local.items():
                leaf = leaves[f"{loc}.weight"]
                probe.finish(p, leaf.grad if leaf.grad is not None else torch.zeros_like(leaf),
                             floats[f"{loc}.weight"].detach())
            del leaves, floats, params
            weights.drop(model, f"{prefix}.{i}")
            release_free_memory()
        grad.close()
    finally:
        for s in stores:
            s.close()
        weights.drop(model, front)
    return loss


def _head_backward(model, arch, layers, input_ids, mask, hidden, total, batch_size, probe, device, current) -> float:
    """Loss at the head; ``hidden`` is overwritten by dL/dhidden; the lm_head is probed if a candidate."""
    norm, head = get_module(model, arch.final_norm), get_module(model, arch.lm_head)
    norm_p = _float_tensors(norm, device)
    head_plan = layers.get(arch.lm_head)
    taps = {"": head_plan} if head_plan is not None else {}
    floats = _leaves(head, taps, device)
    leaves = {**floats, **{k: w.requires_grad_() for k, w in _in_place(head, taps, current, device).items()}}
    head_p = {**_float_tensors(head, device, skip=tuple(leaves)), **leaves}
    for p in taps.values():
        probe.start(p, floats["weight"].detach())
    loss_sum = 0.0
    with _taps(head, taps, probe):
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
        probe.finish(head_plan, leaves["weight"].grad, floats["weight"].detach())
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


@dataclass
class Terms:
    """Per (layer, option) sums over the calibration tokens t, with ``d_t = (Q(W) - W) x_t`` the output error of the
    option's RTN and ``g_t = dL/d(layer output)`` (L the mean loss, so ``g_t`` carries its 1/n):

    - ``fisher``: ``sum_t (g_t . d_t)^2``; ``n/2`` times it is the empirical-Fisher quadratic term, the estimate;
    - ``first``: ``sum_t g_t . d_t``, the signed first-order change of L on these tokens (kept out of the estimate);
    - ``abs_grad``: ``sum |dL/dW * (Q(W) - W)|``, AutoRound's first-order score (reference §8), for comparison;
    - ``channel``: ``sum_t sum_o g_to^2 d_to^2``, the per-output-channel (diagonal) variant of ``fisher``.
    """

    fisher: float = 0.0
    first: float = 0.0
    abs_grad: float = 0.0
    channel: float = 0.0


class _Accumulate:
    """A ``Probe`` that fills ``Terms`` for every (layer, quantized option); one matmul per option and batch."""

    def __init__(self, options: Mapping[str, QuantScheme]):
        self.options = {n: s for n, s in options.items() if s.is_quantized}
        self.terms: dict[str, dict[str, Terms]] = {}
        self._delta: dict[str, dict[str, torch.Tensor]] = {}

    def start(self, plan: LayerPlan, weight: torch.Tensor) -> None:
        delta = {}
        for name, s in self.options.items():
            d = rtn_weight(plan, s, weight) - weight.float()
            delta[name] = d if plan.conv1d else d.t()  # (in, out): x @ delta is the output error
        self._delta[plan.name] = delta
        self.terms[plan.name] = {n: Terms() for n in self.options}

    def tokens(self, plan: LayerPlan, x: torch.Tensor, g: torch.Tensor) -> None:
        x, g = x.float(), g.float()
        for name, d in self._delta[plan.name].items():
            err = x @ d
            s = (err * g).sum(-1, dtype=torch.float64)
            t = self.terms[plan.name][name]
            t.first += float(s.sum())
            t.fisher += float((s * s).sum())
            t.channel += float(((err * g) ** 2).sum(dtype=torch.float64))

    def finish(self, plan: LayerPlan, grad: torch.Tensor, weight: torch.Tensor) -> None:
        for name, d in self._delta.pop(plan.name).items():
            g = grad if plan.conv1d else grad.t()
            self.terms[plan.name][name].abs_grad = float((g * d).abs().sum(dtype=torch.float64))


def sensitivity_terms(model: torch.nn.Module, arch: ArchFacts, layers: Mapping[str, LayerPlan],
                      options: Mapping[str, QuantScheme], input_ids: torch.Tensor, mask: torch.Tensor | None,
                      weights: ModelWeights | None = None, batch_size: int = 8, spill_dir: "str | Path | None" = None,
                      max_memory: int | None = None, device: str = "cpu",
                      current: Mapping[str, QuantScheme] | None = None) -> tuple[dict[str, dict[str, Terms]], int]:
    """layer -> quantized option -> ``Terms``, and the number of loss tokens n, from one forward and backward
    (with ``current``'s RTN weights in place, see ``layer_gradients``)."""
    where = Path(spill_dir or tempfile.gettempdir())
    budget = MemoryBudget.default(where) if max_memory is None else MemoryBudget(max_memory, where)
    acc = _Accumulate(options)
    layer_gradients(model, arch, layers, input_ids, mask, acc, weights, batch_size, budget, device, current)
    full_mask = mask is None or bool(mask.all())
    return acc.terms, _n_targets(input_ids, None if full_mask else mask.bool())


def estimate(t: Terms, n: int) -> float:
    """The predicted damage of one layer under one option: ``n/2 * sum_t (g_t . d_t)^2``, the second-order
    (Fisher) change of the loss, which is also the KL divergence from the float model to second order. The first-order
    term is left out: it is zero in expectation where the labels follow the model, it only fits the calibration
    tokens, and with it a wider option could score worse than a narrower one."""
    return 0.5 * n * t.fisher


def sensitivity(model: torch.nn.Module, arch: ArchFacts, layers: Mapping[str, LayerPlan],
                options: Mapping[str, QuantScheme], input_ids: torch.Tensor, mask: torch.Tensor | None,
                weights: ModelWeights | None = None, batch_size: int = 8, spill_dir: "str | Path | None" = None,
                max_memory: int | None = None, device: str = "cpu",
                current: Mapping[str, QuantScheme] | None = None) -> dict[str, dict[str, float]]:
    """layer -> option -> ``estimate`` of its loss increase (0 for float options), from one pass."""
    terms, n = sensitivity_terms(model, arch, layers, options, input_ids, mask, weights, batch_size, spill_dir,
                                 max_memory, device, current)
    return {layer: {o: estimate(terms[layer][o], n) if o in terms[layer] else 0.0 for o in options} for layer in terms}
