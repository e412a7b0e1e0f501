"""Quality of RTN, optimised RTN and SignRound on the real SmolLM2-135M-Instruct, measured on held-out text.

    python benchmarks/quality.py [--schemes W4A16,W2A16G64] [--iters 200] [--windows 16]

Calibration: 32 rows x 512 tokens of signround's bundled corpus; evaluation: KL divergence per token
and perplexity against the float model on the bundled held-out text (never used for calibration).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from common import heldout_rows, load_smollm2, machine_line
from signround import AutoRound
from signround.eval.metrics import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="W4A16,W2A16G64")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--tune_dtype", default="float32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the fake quantization")
    args = ap.parse_args()
    print(machine_line())
    lm = load_smollm2()
    rows = heldout_rows(lm.tokenizer, 512, args.windows)
    methods = {
        "rtn": dict(iters=0, disable_opt_rtn=True),
        "opt-rtn": dict(iters=0),
        f"signround-{args.iters}": dict(iters=args.iters, tune_dtype=args.tune_dtype,
                                        enable_torch_compile=args.compile),
    }
    table = []
    for scheme in args.schemes.split(","):
        for name, kw in methods.items():
            model = copy.deepcopy(lm.model)
            ar = AutoRound(model, lm.tokenizer, scheme, nsamples=32, seqlen=512, batch_size=4, show_progress=False, **kw)
            t0 = time.perf_counter()
            ar.quantize()
            seconds = time.perf_counter() - t0
            res = evaluate(model, rows, lm.model)
            table.append({"scheme": scheme, "method": name, "seconds": round(seconds, 1), "kl": res.kl, "ppl": res.ppl,
                          "ppl_float": res.ppl_float})
            print(f"{scheme:9s} {name:15s} {seconds:7.1f}s  KL {res.kl:.4f}  ppl {res.ppl:8.3f} (float {res.ppl_float:.3f})",
                  flush=True)
            del model, ar
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print(json.dumps(table))


if __name__ == "__main__":
    main()
