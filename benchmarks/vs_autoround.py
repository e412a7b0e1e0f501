"""signround against the PyPI ``auto-round`` on the same model, data and CPU, one after the other.

    python benchmarks/vs_autoround.py            # needs: pip install auto-round==0.16.1 (constraints file)

Rows (SmolLM2-135M-Instruct, W4A16, 32 calibration rows x 512 tokens from signround's bundled corpus):
  1. identical settings: iters 50, batch 4, float32 (AutoRound amp=False), for both tools;
  2. signround's recommended CPU settings (bf16 matmuls on AMX, fused fake quantization, fewer iterations).
Each run is a separate process (so its peak RSS is its own); the parent evaluates every quantized
model against the float one on held-out text (KL divergence per token, perplexity).
"""

from __future__ import annotations

import argparse
import dataclasses
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

RUNS = {
    "autoround-fp32": {"tool": "autoround", "iters": 50, "amp": False},
    "signround-fp32": {"tool": "signround", "iters": 50, "tune_dtype": "float32", "compile": False},
    "signround-cpu": {"tool": "signround", "iters": 25, "tune_dtype": "bfloat16", "compile": True, "lr": 0.02},
    "signround-cpu-lpp": {"tool": "signround", "iters": 25, "tune_dtype": "bfloat16", "compile": True, "lr": 0.02,
                          "low_precision_passes": True},
    "autoround-bf16": {"tool": "autoround", "iters": 50, "amp": True},
}


def _child(run: str, ids_path: str, out_path: str) -> None:
    """Quantize in this process and save the dequantized state dict plus timings."""
    cfg = RUNS[run]
    from common import load_smollm2

    lm = load_smollm2()
    model, tok = lm.model, lm.tokenizer
    ids = torch.load(ids_path)
    t0 = time.perf_counter()
    if cfg["tool"] == "autoround":
        from auto_round import AutoRound as AR

        ar = AR(model, tokenizer=tok, scheme=SCHEME, iters=cfg["iters"], nsamples=NSAMPLES, seqlen=SEQLEN,
                batch_size=BATCH, amp=cfg["amp"], device_map="cpu", dataset=[r.unsqueeze(0) for r in ids],
                enable_torch_compile=False)
        ar.quantize()
        iters_run = cfg["iters"] * model.config.num_hidden_layers
    else:
        from signround import AutoRound

        ar = AutoRound(model, tok, SCHEME, iters=cfg["iters"], nsamples=NSAMPLES, seqlen=SEQLEN, batch_size=BATCH,
                       dataset=ids, tune_dtype=cfg["tune_dtype"], lr=cfg.get("lr"), show_progress=False,
                       enable_torch_compile=cfg["compile"])
        if cfg.get("low_precision_passes"):
            ar.runtime = dataclasses.replace(ar.runtime, low_precision_passes=True)
        _, result = ar.quantize()
        iters_run = sum(b.get("iters_run", 0) for b in result.blocks.values())
    seconds = time.perf_counter() - t0
    torch.save({k: v for k, v in model.state_dict().items()}, out_path)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out_path + ".json").write_text(json.dumps({"seconds": seconds, "peak_rss_mib": rss, "iters_run": iters_run}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="autoround-fp32,signround-fp32,signround-cpu,signround-cpu-lpp",
                    help=f"comma-separated, from {', '.join(RUNS)}")
    ap.add_argument("--windows", type=int, default=16, help="held-out windows of 512 tokens for KL")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return

    from common import heldout_rows, load_smollm2, machine_line, matmul_gflops
    from signround.calib import get_calibration_data
    from signround.eval.metrics import evaluate

    print(machine_line())
    fp32 = matmul_gflops()
    print(f"float32 matmul throughput: {fp32:.0f} GFLOP/s")
    lm = load_smollm2()
    float_model, tok = lm.model, lm.tokenizer
    calib = get_calibration_data(tok, None, nsamples=NSAMPLES, seqlen=SEQLEN, seed=42)
    rows = heldout_rows(tok, 512, args.windows)
    n_blocks = float_model.config.num_hidden_layers
    block_params = sum(p.numel() for n, p in float_model.model.layers[0].named_parameters() if n.endswith("proj.weight"))
    flops_per_iter = 3 * 2 * block_params * BATCH * SEQLEN

    table = []
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = os.path.join(tmp, "ids.pt")
        torch.save(calib.input_ids, ids_path)
        for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
            out = os.path.join(tmp, f"{run}.pt")
            print(f"running {run} ...", flush=True)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--child", run, ids_path, out], check=True)
            wall = time.perf_counter() - t0
            info = json.loads(Path(out + ".json").read_text())
            model = load_smollm2().model
            model.load_state_dict(torch.load(out))
            res = evaluate(model, rows, float_model)
            per_iter = info["seconds"] / max(info["iters_run"], 1)
            table.append({"run": run, "quantize_s": info["seconds"], "process_s": wall, "peak_rss_mib": info["peak_rss_mib"],
                          "iters_run": info["iters_run"], "s_per_iter": per_iter,
                          "flops_frac": flops_per_iter / per_iter / 1e9 / fp32, "kl": res.kl, "ppl": res.ppl,
                          "ppl_float": res.ppl_float})
    print(f"\n{'run':16s} {'quantize s':>10s} {'process s':>9s} {'peak RSS MiB':>12s} {'iters':>6s} "
          f"{'s/iter':>7s} {'FLOP/s vs fp32 mm':>17s} {'KL':>8s} {'ppl':>7s}")
    for r in table:
        print(f"{r['run']:16s} {r['quantize_s']:10.1f} {r['process_s']:9.1f} {r['peak_rss_mib']:12.0f} {r['iters_run']:6d} "
              f"{r['s_per_iter']:7.3f} {r['flops_frac']:16.0%} {r['kl']:8.4f} {r['ppl']:7.3f}")
    print(f"float model perplexity: {table[0]['ppl_float']:.3f}" if table else "")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
