"""The block loop: float reference, tune or round each planned Linear, feed the next block.

For block i, in order (AutoRound reference §2.12, with fewer passes):
1. float pass over all rows on float inputs -> targets (also the next block's float inputs);
   the importance matrix of every planned Linear is collected by hooks during this same pass;
2. each planned Linear starts from optimised RTN (or min/max) and, when iters > 0, is tuned by SignRound
   on the quantized chain's inputs against the float targets;
3. the block's weights become the dequantized codes, and one pass over the quantized inputs gives
   the next block's quantized inputs.
Plain RTN (iters 0, no opt-RTN) needs no data and no forward pass at all.

The importance matrices collected on the way (and the lm_head's, from the final hidden states) are
returned in ``QuantizeResult.imatrix`` for exporters that quantize tensors themselves (GGUF's
token_embd). Layer states come from the registry of ``tune/layer.py`` by the scheme's data type.

Data parallel (``runtime.parallel``, ``tune/distributed.py``): every rank runs this same loop on its
shard of the rows; importance matrices, gradients and held-out losses are reduced over the ranks, so
every rank computes the same codes.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..calib.rowstore import MemoryBudget, RowStore, from_tensor, row_store
from ..memory import release_free_memory
from ..model.arch import ArchFacts, get_module
from ..model.capture import capture_block_args, capture_first_block_inputs, run_block
from ..model.streaming import ModelWeights, outside_modules
from ..method import Start, method_for
from ..options import option
from ..plan import LayerPlan, QuantPlan
from ..quant.types import QuantizedWeight
from . import fp_layer, gguf_layer  # noqa: F401  (register the FP/MX and "gguf" layer states)
from .distributed import SINGLE_PROCESS, DataParallel
from .imatrix import ImatrixCollector
from .act_inputs import ActMaxCollector, act_schemes, quantized_inputs, static_names
from .layer import LayerQuantizer, make_layer_state
from .resume import BlockPart, Progress, WorkDir, load_progress, save_block
from .upcast import linears_in_float32, small_tensors_to_float32

if TYPE_CHECKING:
    from ..export.registry import ExportSink
from .signround import BlockReport, SignRoundConfig, autocast_context as _autocast, tune_block

__all__ = ["RuntimeOptions", "QuantizeResult", "quantize_model", "write_weight"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and in what precision the work runs; never changes what the result means."""

    device: str = "cpu"
    tune_dtype: torch.dtype = torch.float32  # matmul precision inside the tuning loop (bf16 = autocast)
    low_gpu_mem_usage: bool = False  # keep the cached activations on the CPU, move them per batch
    forward_batch_size: int = option("batch_size").default  # rows per batch for the passes that only run forward
    low_precision_passes: bool = False  # run the reference and chain passes in tune_dtype too
    show_progress: bool = True
    parallel: DataParallel = SINGLE_PROCESS  # data-parallel ranks: each holds 1/N of the calibration rows
    max_memory: int | None = None  # bytes of RAM for cached activations (None: half the available RAM)

    @property
    def cache_device(self) -> str:
        return "cpu" if self.low_gpu_mem_usage else self.device


@dataclass
class QuantizeResult:
    weights: dict[str, QuantizedWeight] = field(default_factory=dict)
    blocks: dict[int, dict] = field(default_factory=dict)  # block index -> report fields and seconds
    layers: dict[str, dict] = field(default_factory=dict)  # layer name -> weight error and scheme
    imatrix: dict[str, torch.Tensor] = field(default_factory=dict)  # module name -> (in,) mean squared input
    act_max: dict[str, torch.Tensor] = field(default_factory=dict)  # module name -> calibrated max |input| (static acts)
    seconds: float = 0.0


@torch.no_grad()
def write_weight(module: torch.nn.Module, plan: LayerPlan, qw: QuantizedWeight) -> None:
    """Replace a module's float weight by the dequantized codes (so the in-memory model is the quantized one)."""
    w = qw.dequantize().float()
    if plan.conv1d:
        w = w.t()
    module.weight.copy_(w.to(device=module.weight.device, dtype=module.weight.dtype))


RECORD_SLICE_ELEMENTS = 1 << 20  # the layer record dequantizes about this many weights at a time


def _dequantized_rows(qw) -> "Callable[[int, int], torch.Tensor]":
    """rows(start, stop) of the dequantized weight (out, in), float32: int codes are sliced before
    dequantizing; other results (GGUF, FP) are dequantized whole, once."""
    if isinstance(qw, QuantizedWeight):
        return lambda start, stop: QuantizedWeight(qw.codes[start:stop], qw.scale[start:stop], qw.zero[start:stop],
                                                   qw.bits, qw.group_size, qw.sym).dequantize().float()
    whole = qw.dequantize().float()
    return lambda start, stop: whole[start:stop]


@torch.no_grad()
def _layer_record(plan: LayerPlan, float_w: torch.Tensor, qw: QuantizedWeight) -> dict:
    """Block, scheme and ||dequantized - float|| / ||float|| (float32 norms, as recorded since the start).

    The difference is filled slice of rows by slice of rows into one float32 buffer: no full-size
    dequantized copy and its temporaries (these were the streamed run's largest allocations). Its
    elements, and so its norm, are those of the whole-tensor expression.
    """
    w = float_w.detach().float()
    w = w.t() if plan.conv1d else w  # (out, in)
    w_cpu = w.cpu()
    diff = torch.empty(w_cpu.shape, dtype=torch.float32)
    rows = max(1, RECORD_SLICE_ELEMENTS // max(1, w_cpu.shape[1]))
    deq = _dequantized_rows(qw)
    for start in range(0, w_cpu.shape[0], rows):
        torch.sub(deq(start, start + rows).cpu(), w_cpu[start:start + rows], out=diff[start:start + rows])
    err = diff.norm() / w.norm().clamp(min=1e-12)
    return {"block": plan.block, "scheme": plan.scheme.short_name(), "weight_rel_err": round(float(err), 6)}


def _quantize_states(states: list[LayerQuantizer], modules: dict[str, torch.nn.Module], result: QuantizeResult,
                     write: bool = True) -> None:
    """Each state's codes and record into ``result``; with ``write``, its module's weight becomes the codes.

    ``write=False`` when the module is dropped right after (a streamed block nobody runs again): the
    dequantized copy would be made only to be thrown away.
    """
    for s in states:
        qw = s.result()
        module = modules[s.local_name]
        result.layers[s.plan.name] = _layer_record(s.plan, module.weight, qw)
        result.weights[s.plan.name] = qw
        if write:
            write_weight(module, s.plan, qw)


@dataclass
class _Output:
    """Where finished layers go: the sinks writing the output, and whether their codes stay in the result."""

    sinks: Sequence["ExportSink"] = ()
    keep_codes: bool = True

    def hand_over(self, names: list[str], result: QuantizeResult) -> None:
        done = {n: result.weights[n] for n in names if n in result.weights}
        for sink in self.sinks:
            sink.add(done)
        if not self.keep_codes:
            for n in done:
                del result.weights[n]


def _rtn_without_data(model: torch.nn.Module, plan: QuantPlan, result: QuantizeResult, weights: ModelWeights,
                      output: _Output, show: bool, fused_groups: Sequence[Sequence[str]] = ()) -> None:
    """Plain RTN: each block's tensors are read, rounded, handed to the writers and dropped; no forward pass."""
    groups = [(f"{plan.blocks_prefix}.{i}", plan.block_layers(i)) for i in range(plan.n_blocks)]
    groups += [(p.name, [p]) for p in plan.outside_layers()]
    for prefix, layers in tqdm(groups, desc="RTN", unit="block", disable=not show):
        if not layers:
            continue
        weights.load(model, prefix)
        local = {p.name[len(prefix) + 1:]: p for p in layers}  # names in the block (fused groups use them)
        amax = fp_layer.shared_amax({n: (p, model.get_submodule(p.name).weight) for n, p in local.items()},
                                    fused_groups)
        for n, p in local.items():
            module = model.get_submodule(p.name)
            state = make_layer_state(p, p.name, module.weight, optimize=False, tensor_amax=amax.get(n))
            _quantize_states([state], {p.name: module}, result, write=not _drops(weights))
        output.hand_over([p.name for p in layers], result)
        weights.drop(model, prefix)
        release_free_memory()


def _drops(weights: ModelWeights) -> bool:
    """Whether finished modules leave memory (streamed, not kept): their weights need not hold the codes."""
    return weights.streamed and not weights.keep


class _Phases:
    """Seconds spent in each phase of a block, for the run log."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._t, 3)
        self._t = now


def _split_rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed held-out set (1/8 of the rows, at least one) for choosing the best iteration."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    if n < 2:
        return order, order
    n_val = max(1, n // 8)
    return order[n_val:], order[:n_val]


def _forward_rows(block, hidden, out, block_args, rows_per_batch, device, collectors=(), mask=None,
                  autocast_dtype=None) -> None:
    """out[rows] = block(hidden[rows]) for every row, batch by batch (out may be hidden itself).

    The block runs in float32 whatever dtype the rows are cached in (``RowStore``s cast on write).
    ``collectors`` (importance, activation maxima) are told which rows' tokens are real (``mask``).
    """
    for start in range(0, hidden.shape[0], rows_per_batch):
        sl = slice(start, start + rows_per_batch)
        for c in collectors:
            c.mask = None if mask is None else mask[sl]
        with _autocast(device, autocast_dtype):
            y = run_block(block, hidden[sl].to(device=device, dtype=torch.float32), block_args)
        out[sl] = y.to(out.device, out.dtype)


@dataclass
class _Chain:
    """The cached activations between blocks: float targets, the quantized chain, the tuning row split."""

    fp: RowStore  # float inputs of the current block (float outputs after its reference pass)
    q: RowStore | None  # the quantized chain's inputs, when tuning runs on them
    mask: torch.Tensor | None
    train_idx: torch.Tensor  # global row indices (over all ranks); fp/q/mask hold this rank's shard
    val_idx: torch.Tensor
    n_rows: int  # rows over all ranks
    budget: MemoryBudget  # RAM the cached rows may take; beyond it they spill to disk

    def close(self) -> None:
        for store in (self.fp, self.q):
            if store is not None:
                store.close()


def quantize_model(
    model: torch.nn.Module,
    arch: ArchFacts,
    plan: QuantPlan,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    signround: SignRoundConfig,
    start: Start = Start.SEARCH,
    runtime: RuntimeOptions = RuntimeOptions(),
    work: WorkDir | None = None,
    weights: ModelWeights | None = None,
    sinks: Sequence["ExportSink"] = (),
    spill_dir: "str | Path | None" = None,
    act_max: "dict[str, torch.Tensor] | None" = None,
) -> QuantizeResult:
    """Quantize every planned layer of ``model``; return the codes and a per-block report.

    The method is ``method_for(signround.iters, start)``: SignRound when iters > 0, else optimised RTN
    (``Start.SEARCH``) or plain RTN (``Start.MINMAX``, which needs no data).

    ``weights`` (default: the model is in memory and stays so): a streamed model's blocks are read one at a
    time and, unless ``weights.keep``, dropped once quantized; then ``sinks`` (export writers) receive every
    layer's codes as its block finishes and the result keeps no codes, so neither the model nor the output is
    ever whole in memory. With ``keep`` the model ends up in memory holding its dequantized codes.
    Cached activations take at most ``runtime.max_memory`` bytes of RAM (default: half the available RAM);
    beyond that they spill to files in ``spill_dir`` (default: the system's temporary directory).

    ``act_max``: the dict that receives the calibrated input maxima of static-activation layers as their
    blocks finish (the writers' ``ExportInput.act_max``, so a streamed sink has them when it packs the layer).

    ``work`` (``tune/resume.py``, opened for this very run): every finished block is checkpointed there,
    and the blocks it already holds are restored from their codes instead of being run again; the loop
    continues from the next one with the saved inputs (data parallel: each rank its own shard of them).
    """
    t0 = time.time()
    result = QuantizeResult(act_max={} if act_max is None else act_max)
    weights = weights or ModelWeights.in_memory(model)
    output = _Output(sinks, keep_codes=weights.keep or not weights.streamed)
    method, _ = method_for(signround.iters, start is Start.MINMAX)
    if not plan.quantized():
        logger.warning("the plan quantizes no layer; nothing to do")
    elif not method.needs_data:
        _rtn_without_data(model, plan, result, weights, output, runtime.show_progress, arch.fused_groups)
    else:
        if input_ids is None:
            raise ValueError(f"{method.label} needs calibration data (input_ids)")
        limit = runtime.max_memory
        budget = (MemoryBudget.default(spill_dir or tempfile.gettempdir()) if limit is None
                  else MemoryBudget(limit, Path(spill_dir or tempfile.gettempdir())))
        _block_loop(model, arch, plan, input_ids, attention_mask, signround, start, runtime, work, weights, output,
                    budget, result)
    if weights.keep:
        weights.load(model, "")  # whatever was never read (a float lm_head): the quantized model is whole
    result.seconds = time.time() - t0
    return result


def _block_loop(model, arch, plan, input_ids, attention_mask, signround, start, runtime, work, weights, output,
                budget, result) -> None:
    """Capture the first block's inputs, then quantize block after block, then the layers outside the blocks."""
    method, _ = method_for(signround.iters, start is Start.MINMAX)
    # Data parallel: the rows are the same on every rank; each keeps its shard from here on.
    dp, n_rows = runtime.parallel, input_ids.shape[0]
    dp.check_identical(input_ids, "calibration rows")
    if attention_mask is not None:
        dp.check_identical(attention_mask, "calibration attention masks")
    if n_rows < dp.world_size:
        raise ValueError(f"{n_rows} calibration rows cannot be split over {dp.world_size} processes")
    blocks = get_module(model, arch.blocks)
    front = outside_modules(model, plan.blocks_prefix, skip=(plan.lm_head,) if plan.lm_head else ())
    weights.load(model, front, mapped=not weights.keep)  # embeddings (and what else runs before the first block)
    block_args = capture_block_args(model, blocks, input_ids[:1])
    progress = load_progress(work, dp) if work is not None else Progress(0)
    cache_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if progress.next_block:
        fp = from_tensor(progress.fp.to(cache_dtype), budget, "float inputs", device=runtime.cache_device)
        q = None if progress.q is None else from_tensor(progress.q.to(cache_dtype), budget, "quantized inputs",
                                                        device=runtime.cache_device)
        _restore_blocks(model, plan, progress, result, weights, output)
        if dp.is_main:
            logger.warning("resuming from block %d of %d: %d finished block(s) restored from their codes in %s",
                           progress.next_block + 1, plan.n_blocks, progress.next_block, work.path)
    else:
        fp = _capture_inputs(model, blocks[0], dp.shard(input_ids), runtime, cache_dtype, budget)
        q = fp.clone("quantized inputs") if method.tunes and signround.enable_quanted_input else None
    weights.drop(model, front)
    mask = None if attention_mask is None or bool(attention_mask.all()) else \
        dp.shard(attention_mask.bool()).to(runtime.cache_device)
    chain = _Chain(fp, q, mask, *_split_rows(n_rows, signround.seed), n_rows, budget)
    try:
        bar = tqdm(range(progress.next_block, plan.n_blocks), desc=method.label, unit="block",
                   disable=not runtime.show_progress or not dp.is_main)
        for i in bar:
            prefix = f"{plan.blocks_prefix}.{i}"
            weights.load(model, prefix)
            info = _quantize_block(i, blocks[i], block_args[i], plan, chain, method, start, signround, runtime, result,
                                   arch.fused_groups, drops=_drops(weights))
            if "loss_before" in info:
                bar.set_postfix_str(f"loss {info['loss_before']:.3g}->{info['loss_after']:.3g} "
                                    f"(best it {info['best_iter']})")
            result.blocks[i] = info
            if work is not None:
                save_block(work, i, _block_part(plan, i, result), chain.fp.tensor(),
                           None if chain.q is None else chain.q.tensor(), dp)
            output.hand_over([p.name for p in plan.block_layers(i)], result)
            weights.drop(model, prefix)
            release_free_memory()
        _quantize_outside(model, arch, plan, chain.q if chain.q is not None else chain.fp, mask, start.searches,
                          runtime, result, weights, output)
    finally:
        chain.close()


def _capture_inputs(model, first_block, input_ids, runtime, dtype, budget) -> RowStore:
    """The hidden states entering the first block, batch by batch into a store in the model's dtype."""
    rows, step = input_ids.shape[0], runtime.forward_batch_size
    store = None
    for s in range(0, rows, step):
        x = capture_first_block_inputs(model, first_block, input_ids[s:s + step], step, dtype, runtime.cache_device)
        if store is None:
            store = row_store((rows, *x.shape[1:]), dtype, budget, "float inputs", device=runtime.cache_device)
        store[s:s + x.shape[0]] = x
    return store


def _block_part(plan: QuantPlan, i: int, result: QuantizeResult) -> BlockPart:
    """What block ``i`` added to ``result``: its layers' codes and records, its report fields, its imatrices."""
    names = [p.name for p in plan.block_layers(i)]
    return BlockPart(weights={n: result.weights[n] for n in names}, layers={n: result.layers[n] for n in names},
                     info=result.blocks[i], imatrix={n: result.imatrix[n] for n in names if n in result.imatrix},
                     act_max={n: result.act_max[n] for n in names if n in result.act_max})


def _restore_blocks(model: torch.nn.Module, plan: QuantPlan, progress: Progress, result: QuantizeResult,
                    weights: ModelWeights, output: _Output) -> None:
    """The finished blocks' parts into ``result`` and the writers; their codes into the model when it is kept."""
    for i, part in enumerate(progress.blocks):
        expected = {p.name for p in plan.block_layers(i)}
        if set(part.weights) != expected:
            raise ValueError(f"checkpoint of block {i} holds layers {sorted(part.weights)}, the plan "
                             f"{sorted(expected)}")
        if weights.keep or not weights.streamed:
            weights.load(model, f"{plan.blocks_prefix}.{i}")
            for name, qw in part.weights.items():
                write_weight(model.get_submodule(name), plan.layers[name], qw)
        result.weights.update(part.weights)
        result.layers.update(part.layers)
        result.imatrix.update(part.imatrix)
        result.act_max.update(part.act_max)
        result.blocks[i] = part.info
        output.hand_over(list(part.weights), result)


def _upcast_per_layer(tuning: bool, chain: _Chain, dtype: torch.dtype) -> bool:
    """Nothing tuned and a low-precision block: its Linear weights are upcast one at a time (``upcast.py``)."""
    return not tuning and chain.q is None and dtype != torch.float32


def _quantize_block(i, block, block_args, plan, chain, method, start, signround, runtime, result,
                    fused_groups=(), drops: bool = False) -> dict:
    """Reference pass, layer states, tuning and the chain pass of block ``i``; returns its report fields.

    ``drops``: the block leaves memory once done; its weights then get the codes only for the chain pass.
    """
    tb = time.time()
    device, tuning, optimize = runtime.device, method.tunes, start.searches
    autocast = runtime.tune_dtype if runtime.tune_dtype != torch.float32 else None
    pass_autocast = autocast if runtime.low_precision_passes else None
    rows = runtime.forward_batch_size
    orig = next(block.parameters())
    orig_dtype, orig_device = orig.dtype, orig.device
    args_i = block_args.to(device, torch.float32)
    layer_plans = plan.block_layers(i)
    prefix = f"{plan.blocks_prefix}.{i}."
    modules = {p.name[len(prefix):]: block.get_submodule(p.name[len(prefix):]) for p in layer_plans}
    lean = _upcast_per_layer(tuning, chain, orig_dtype)
    if lean:
        small_tensors_to_float32(block, modules, device)
    else:
        block.to(device=device, dtype=torch.float32)

    collector, act_collector = ImatrixCollector(), ActMaxCollector()
    acts = act_schemes(layer_plans, prefix)  # layers whose inputs are quantized (local names)
    targets = chain.fp if not tuning or signround.enable_quanted_input else chain.fp.empty_like("float targets")
    inputs_for_tuning = chain.q if signround.enable_quanted_input else chain.fp
    phases = _Phases()
    statics = {n: modules[n] for n in static_names(acts)}
    with torch.no_grad(), collector.watch(modules if optimize else {}), act_collector.watch(statics), \
            linears_in_float32(modules if lean else {}):
        _forward_rows(block, chain.fp, targets, args_i, rows, device, (collector, act_collector), chain.mask,
                      pass_autocast)
    if optimize:
        runtime.parallel.reduce_imatrix(collector.sums, collector.counts, list(modules))
    act_max = {n: runtime.parallel.reduce_max(act_collector.max.get(n, torch.zeros(()))) for n in statics}
    result.act_max.update({prefix + n: m for n, m in act_max.items()})
    release_free_memory()  # the pass's temporaries, before the per-layer search allocates its own
    phases.mark("reference")
    amax = fp_layer.shared_amax({local: (p, modules[local].weight) for local, p in zip(modules, layer_plans)},
                                fused_groups)  # NVFP4: one global scale per fused q/k/v, gate/up
    result.imatrix.update({p.name: im for local, p in zip(modules, layer_plans)
                           if (im := collector.result(local)) is not None})

    def state(local: str, p: LayerPlan) -> LayerQuantizer:
        w = modules[local].weight
        return make_layer_state(p, local, w.float() if lean else w, collector.result(local), optimize=optimize,
                                tensor_amax=amax.get(local))

    states: list[LayerQuantizer] = []
    if lean:  # one layer's float32 weight at a time: made, rounded, recorded, released
        for local, p in zip(modules, layer_plans):
            _quantize_states([state(local, p)], modules, result, write=not drops)
            release_free_memory()  # this layer's search state, before the next layer's
    else:
        states = [state(local, p) for local, p in zip(modules, layer_plans)]
    phases.mark("init")
    report: BlockReport | None = None
    if tuning and states:
        block.requires_grad_(False)
        with quantized_inputs(modules, acts, act_max):
            report = tune_block(block, states, inputs_for_tuning, targets, args_i, chain.mask, chain.train_idx,
                                chain.val_idx, signround, device, autocast_dtype=autocast, parallel=runtime.parallel,
                                n_rows=chain.n_rows)
        phases.mark("tune")
    _quantize_states(states, modules, result, write=chain.q is not None or not drops)
    n_layers = len(layer_plans)
    states.clear()  # their frozen weights (views of the float32 block) and tunables go before the next copies
    if chain.q is not None:
        with torch.no_grad(), quantized_inputs(modules, acts, act_max):
            _forward_rows(block, chain.q, chain.q, args_i, rows, device, autocast_dtype=pass_autocast)
    phases.mark("chain")
    if targets is not chain.fp:
        chain.fp.close()
        chain.fp = targets
    block.to(device=orig_device, dtype=orig_dtype)
    info = {"layers": n_layers, "seconds": round(time.time() - tb, 3), "phase_seconds": phases.seconds}
    if report is not None:
        info.update(loss_before=report.loss_before, loss_after=report.loss_after, best_iter=report.best_iter,
                    iters_run=report.iters_run)
        logger.info("block %d/%d: loss %.4g -> %.4g, best iter %d of %d, %.1fs", i + 1, plan.n_blocks,
                    report.loss_before, report.loss_after, report.best_iter, report.iters_run, info["seconds"])
    return info


@torch.no_grad()
def _quantize_outside(model, arch, plan, hidden, mask, optimize, runtime, result, weights, output) -> None:
    """Layers outside the blocks (lm_head when asked): opt-RTN on the final hidden states' importance.

    The lm_head's importance is collected whenever optimising (a cheap pass through the final norm),
    also when it is not planned: a GGUF file quantizes it (or the tied embedding) itself.
    """
    head_static = bool(static_names(act_schemes(plan.outside_layers())))
    if (optimize or head_static) and arch.final_norm and plan.lm_head:
        weights.load(model, arch.final_norm)
        norm = get_module(model, arch.final_norm)
        collector, act_collector = ImatrixCollector(), ActMaxCollector()
        ref = next(norm.parameters())
        for start in range(0, hidden.shape[0], runtime.forward_batch_size):
            sl = slice(start, start + runtime.forward_batch_size)
            collector.mask = act_collector.mask = None if mask is None else mask[sl]
            x = norm(hidden[sl].to(device=ref.device, dtype=ref.dtype))
            collector.add(plan.lm_head, x)
            if head_static:
                act_collector.add(plan.lm_head, x)
        runtime.parallel.reduce_imatrix(collector.sums, collector.counts, [plan.lm_head])
        if (head := collector.result(plan.lm_head)) is not None and optimize:
            result.imatrix[plan.lm_head] = head
        if head_static:
            result.act_max[plan.lm_head] = runtime.parallel.reduce_max(act_collector.max[plan.lm_head])
        weights.drop(model, arch.final_norm)
    for p in plan.outside_layers():
        weights.load(model, p.name)
        module = model.get_submodule(p.name)
        imatrix = result.imatrix.get(p.name) if p.name == plan.lm_head else None
        state = make_layer_state(p, p.name, module.weight, imatrix, optimize=optimize)
        _quantize_states([state], {p.name: module}, result, write=not _drops(weights))
        output.hand_over([p.name], result)
        weights.drop(model, p.name)
        release_free_memory()
