"""AutoScheme on SmolLM2-135M: a mix of {W2A16G64, W4A16} at the size of uniform W3A16, against W3A16 itself.

    python benchmarks/autoscheme.py [--avg_bits 3.148] [--options W2A16G64,W4A16] [--uniform W3A16]
                                    [--iters 0] [--nsamples 16] [--seqlen 256] [--windows 16] [--rounds 2]
                                    [--rows uniform,autoscheme] [--peer autoround|autoround-choice]

Every row uses the same method (optimised RTN with ``--iters 0``, SignRound otherwise), the same calibration
(the bundled corpus, ``--nsamples`` x ``--seqlen``) and is evaluated on the same held-out windows against the
float model: KL divergence per token and perplexity. ``--avg_bits`` defaults to the uniform scheme's own bits
per weight as AutoScheme counts them (W3A16: 3 + 19/128 = 3.148), so every model has the same size. The
AutoScheme row gives the achieved average bits and the seconds of its sensitivity pass(es); ``--rounds N`` runs
AutoScheme with N rounds (each after the first re-scores with the previous choice quantized in place).

``--peer autoround`` adds AutoRound's own AutoScheme (the installed ``auto-round``) at the same target, options,
calibration size and text (signround's calibration rows of ``seqlen + 8`` tokens from the bundled corpus, decoded
into a local JSON file that AutoRound tokenizes and cuts to ``seqlen``; its ``:concat=True`` path fails on local
files in 0.16.1), run on the CPU: the seconds of its scheme choice (``GenScheme.get_layer_config``, timed by wrapping it in this process),
the KL of its model quantized by AutoRound itself (``iters`` as above), and the KL of the same per-layer choice
quantized by signround (``autoround-choice``). ``--peer autoround-choice`` stops AutoRound after its
choice and reports only the choice's seconds and shape (a timing run without its quantization). Average bits are signround's count over the Linear weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _uniform_bits(model, scheme: str) -> float:
    from signround.autoscheme.bits import layer_bits
    from signround.model.arch import arch_facts
    from signround.plan import build_plan
    from signround.schemes import resolve_scheme

    plan = build_plan(model, arch_facts(model), resolve_scheme(scheme))
    layers = plan.quantized()
    return sum(layer_bits(p.scheme, p.shape) for p in layers) / sum(p.shape[0] * p.shape[1] for p in layers)


def _mix_bits(model, choice: dict[str, str], default: str) -> float:
    """Average bits per Linear weight of ``choice`` (layer -> option name), signround's count."""
    from signround.autoscheme.bits import layer_bits
    from signround.model.arch import arch_facts
    from signround.plan import build_plan
    from signround.schemes import resolve_scheme

    plan = build_plan(model, arch_facts(model), resolve_scheme(default), layer_config=dict(choice))
    layers = plan.quantized()
    return sum(layer_bits(p.scheme, p.shape) for p in layers) / sum(p.shape[0] * p.shape[1] for p in layers)


def _depth_split(model, options: list[str], target: float) -> dict[str, str]:
    """The simplest non-uniform plan: the first k blocks in the widest option, the rest in the narrowest, with the
    largest k that fits the target (the shape of AutoRound's own AutoScheme choice on SmolLM2, see RESULTS.md)."""
    from signround.autoscheme.bits import layer_bits
    from signround.model.arch import arch_facts
    from signround.plan import build_plan
    from signround.schemes import resolve_scheme

    narrow, wide = sorted(options, key=lambda o: layer_bits(resolve_scheme(o), (1024, 1024)))[::len(options) - 1]
    names = [p.name for p in build_plan(model, arch_facts(model), resolve_scheme(narrow)).quantized()]
    blocks = sorted({int(n.split(".layers.")[1].split(".")[0]) for n in names})
    best: dict[str, str] = {}
    for k in range(len(blocks) + 1):
        choice = {n: wide if int(n.split(".layers.")[1].split(".")[0]) < k else narrow for n in names}
        if _mix_bits(model, choice, narrow) > target:
            break
        best = choice
    return best


def _rtn_rounds(model, tok, options: list[str], uniform: str, target: float, rows, nsamples: int, seqlen: int,
                rounds: int) -> dict:
    """The quick proxy: plain RTN weights put in place (no optimised RTN, no tuning) for uniform ``uniform`` and for
    AutoScheme's choice after each of ``rounds`` sensitivity rounds; KL on the held-out ``rows`` and on the
    calibration rows (the only data the choice sees)."""
    import copy

    import torch
    from common import kl_vs_float

    from signround.autoscheme.allocate import check_budget, choose
    from signround.autoscheme.bits import effective_scheme
    from signround.autoscheme.config import resolve_options
    from signround.autoscheme.sensitivity import rtn_weight, sensitivity
    from signround.autoscheme.units import build_units
    from signround.calib.dataset import get_calibration_data
    from signround.model.arch import arch_facts
    from signround.plan import build_plan
    from signround.schemes import resolve_scheme

    arch, opts = arch_facts(model), resolve_options(options)
    plan = build_plan(model, arch, resolve_scheme(options[0]))
    cands = {p.name: p for p in plan.quantized()}
    shapes = {n: p.shape for n, p in cands.items()}
    budget = check_budget(target, opts, shapes, {})
    units = build_units(list(cands), plan.blocks_prefix, arch.fused_groups, ())
    ids = get_calibration_data(tok, nsamples=nsamples, seqlen=seqlen).input_ids
    work = copy.deepcopy(model)

    def kl(cfg) -> dict:
        with torch.no_grad():
            for n, sch in cfg.items():
                work.get_submodule(n).weight.copy_(rtn_weight(cands[n], sch, model.get_submodule(n).weight))
        return {"kl": round(kl_vs_float(work, model, rows)["kl"], 4), "kl_calibration": round(kl_vs_float(work, model, ids)["kl"], 4)}

    out = {f"rtn {uniform}": kl({n: resolve_scheme(uniform) for n in cands})}
    current = None
    for r in range(rounds):
        t = time.perf_counter()
        scores = sensitivity(model, arch, cands, opts, ids, None, current=current)
        choice = choose(units, shapes, opts, scores, budget)
        current = {n: effective_scheme(opts[o], shapes[n]) for n, o in choice.option.items()}
        out[f"rtn autoscheme round {r + 1}"] = {**kl(current), "sensitivity_seconds": round(time.perf_counter() - t, 1),
                                                "avg_bits": round(choice.bits / budget.total_params, 4),
                                                "layers_per_option": _counts(choice.option)}
    return out


def _counts(choice: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in choice.values():
        counts[o] = counts.get(o, 0) + 1
    return counts


def _option_of(cfg: dict, options: list[str]) -> str:
    """The option name of one AutoRound layer entry, matched on bits, group size and data type."""
    from signround.schemes import resolve_scheme

    for name in options:
        s = resolve_scheme(name)
        if cfg.get("bits") == s.bits and cfg.get("group_size") == s.group_size and \
                str(cfg.get("data_type", "int")).startswith(s.data_type):
            return name
    raise ValueError(f"AutoRound chose {cfg} for a layer, which is none of {options}")


class _ChoiceMade(Exception):
    """Raised after AutoRound's scheme choice when only its time is wanted (its quantization is not run)."""


def _peer_autoround(args, float_model, tok, target: float, rows, common: dict, choice_only: bool = False) -> dict:
    """AutoRound's AutoScheme at the same target: its choice's seconds and KL, and the KL of that choice in signround.

    ``choice_only``: the seconds of its scheme choice and what it chose, without quantizing."""
    from auto_round import AutoRound as AR, AutoScheme as ARScheme
    from auto_round.auto_scheme import gen_auto_scheme
    from common import clone, kl_vs_float

    from signround import AutoRound
    from signround.calib.dataset import get_calibration_data

    options = args.options.split(",")
    data = Path(tempfile.mkdtemp()) / "calibration.json"
    ids = get_calibration_data(tok, nsamples=args.nsamples, seqlen=args.seqlen + 8).input_ids
    data.write_text(json.dumps([tok.decode(r) for r in ids]))
    timing: dict = {}
    original = gen_auto_scheme.GenScheme.get_layer_config

    def timed(self):  # this process only: the seconds of AutoRound's scheme choice, and what it chose
        t0 = time.perf_counter()
        out = original(self)
        timing["seconds"], timing["choice"] = time.perf_counter() - t0, out
        if choice_only:
            raise _ChoiceMade
        return out

    gen_auto_scheme.GenScheme.get_layer_config = timed
    try:
        t = time.perf_counter()
        scheme = ARScheme(avg_bits=target, options=options, nsamples=args.nsamples, seqlen=args.seqlen, device_map="cpu")
        ar = AR(clone(float_model), tokenizer=tok, scheme=scheme, iters=args.iters, nsamples=args.nsamples,
                seqlen=args.seqlen, device_map="cpu", dataset=str(data), enable_torch_compile=False)
        model = ar.quantize()[0]
        seconds = time.perf_counter() - t
    except _ChoiceMade:
        model = None
    finally:
        gen_auto_scheme.GenScheme.get_layer_config = original
    quantized = {n: c for n, c in timing["choice"].items() if c.get("bits", 16) < 16}
    choice = {n: _option_of(c, options) for n, c in quantized.items()}
    if model is None:
        return {"autoround": {"scheme_seconds": round(timing["seconds"], 1), "layers_per_option": _counts(choice),
                              "avg_bits": round(_mix_bits(float_model, choice, options[0]), 4)}}
    out = {"autoround": {**kl_vs_float(model.float(), float_model, rows), "seconds": round(seconds, 1),
                         "scheme_seconds": round(timing["seconds"], 1), "avg_bits": round(_mix_bits(float_model, choice,
                                                                                                     options[0]), 4),
                         "layers_per_option": _counts(choice), "float_layers": sorted(set(timing["choice"]) - set(choice))}}
    del model, ar
    t = time.perf_counter()
    ar = AutoRound(clone(float_model), tok, scheme=options[0], layer_config=choice, **common)
    model, _ = ar.quantize()
    out["autoround-choice"] = {**kl_vs_float(model, float_model, rows), "seconds": round(time.perf_counter() - t, 1),
                               "avg_bits": out["autoround"]["avg_bits"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--avg_bits", type=float, default=None)
    p.add_argument("--options", default="W2A16G64,W4A16")
    p.add_argument("--uniform", default="W3A16")
    p.add_argument("--iters", type=int, default=0)
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="AutoScheme rounds (re-linearization)")
    p.add_argument("--rows", default="uniform,autoscheme", help="which of uniform,autoscheme,depthsplit,rtnrounds to run "
                   "(depthsplit: the first blocks in the widest option, the rest in the narrowest, at the same target; "
                   "rtnrounds: the plain-RTN proxy of uniform and of AutoScheme after each of --rounds rounds)")
    p.add_argument("--peer", choices=("autoround", "autoround-choice"), default=None,
                   help="add AutoRound's own AutoScheme (autoround-choice: only time its scheme choice, then stop it)")
    args = p.parse_args()

    from common import clone, heldout_rows, kl_vs_float, load_smollm2, machine_line

    from signround import AutoRound, AutoScheme

    lm = load_smollm2()
    float_model, tok = lm.model, lm.tokenizer
    rows = heldout_rows(tok, 512, args.windows)
    target = args.avg_bits or _uniform_bits(float_model, args.uniform)
    common = dict(iters=args.iters, nsamples=args.nsamples, seqlen=args.seqlen, show_progress=False)
    results = {"machine": machine_line(), "load_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
               "target_avg_bits": round(target, 4), "iters": args.iters, "calibration": [args.nsamples, args.seqlen],
               "windows": int(rows.shape[0])}
    wanted = set(args.rows.split(","))

    if "uniform" in wanted:
        t = time.perf_counter()
        ar = AutoRound(clone(float_model), tok, scheme=args.uniform, **common)
        model, _ = ar.quantize()
        results[args.uniform] = {**kl_vs_float(model, float_model, rows), "seconds": round(time.perf_counter() - t, 1),
                                 "avg_bits": round(_uniform_bits(float_model, args.uniform), 4)}
        del model, ar

    if "autoscheme" in wanted:
        t = time.perf_counter()
        auto = AutoScheme(avg_bits=target, options=tuple(args.options.split(",")), rounds=args.rounds)
        ar = AutoRound(clone(float_model), tok, scheme=auto, **common)
        model, _ = ar.quantize()
        record = ar.settings()["auto_scheme"]
        results["autoscheme"] = {**kl_vs_float(model, float_model, rows), "seconds": round(time.perf_counter() - t, 1),
                                 "sensitivity_seconds": record["sensitivity_seconds"],
                                 "avg_bits": record["achieved_avg_bits"], "layers_per_option": _counts(record["layers"]),
                                 "rounds": args.rounds}
        del model, ar

    if "depthsplit" in wanted:
        choice = _depth_split(float_model, args.options.split(","), target)
        t = time.perf_counter()
        ar = AutoRound(clone(float_model), tok, scheme=args.options.split(",")[0], layer_config=choice, **common)
        model, _ = ar.quantize()
        results["depthsplit"] = {**kl_vs_float(model, float_model, rows), "seconds": round(time.perf_counter() - t, 1),
                                 "avg_bits": round(_mix_bits(float_model, choice, args.options.split(",")[0]), 4),
                                 "layers_per_option": _counts(choice)}
        del model, ar

    if "rtnrounds" in wanted:
        results.update(_rtn_rounds(float_model, tok, args.options.split(","), args.uniform, target, rows, args.nsamples,
                                   args.seqlen, args.rounds))

    if args.peer:
        results.update(_peer_autoround(args, float_model, tok, target, rows, common,
                                       choice_only=args.peer == "autoround-choice"))
    results["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
