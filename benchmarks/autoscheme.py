"""AutoScheme on SmolLM2-135M: a mix of {W2A16G64, W4A16} at the size of uniform W3A16, against W3A16 itself.

    python benchmarks/autoscheme.py [--avg_bits 3.148] [--options W2A16G64,W4A16] [--uniform W3A16]
                                    [--iters 0] [--nsamples 16] [--seqlen 256] [--windows 16]

Both runs use the same method (optimised RTN with ``--iters 0``, SignRound otherwise), the same calibration
(the bundled corpus, ``--nsamples`` x ``--seqlen``) and are evaluated on the same held-out windows against the
float model: KL divergence per token and perplexity. ``--avg_bits`` defaults to the uniform scheme's own bits
per weight as AutoScheme counts them (W3A16: 3 + 19/128 = 3.148), so both models have the same size. The
AutoScheme row also gives the achieved average bits (the seconds of its one sensitivity pass are in its log line).
"""

from __future__ import annotations

import argparse
import json
import sys
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--avg_bits", type=float, default=None)
    p.add_argument("--options", default="W2A16G64,W4A16")
    p.add_argument("--uniform", default="W3A16")
    p.add_argument("--iters", type=int, default=0)
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--windows", type=int, default=16)
    args = p.parse_args()

    from common import clone, heldout_rows, kl_vs_float, load_smollm2, machine_line

    from signround import AutoRound, AutoScheme

    lm = load_smollm2()
    float_model, tok = lm.model, lm.tokenizer
    rows = heldout_rows(tok, 512, args.windows)
    target = args.avg_bits or _uniform_bits(float_model, args.uniform)
    common = dict(iters=args.iters, nsamples=args.nsamples, seqlen=args.seqlen, show_progress=False)
    results = {"machine": machine_line(), "target_avg_bits": round(target, 4)}

    t = time.perf_counter()
    ar = AutoRound(clone(float_model), tok, scheme=args.uniform, **common)
    model, _ = ar.quantize()
    results[args.uniform] = {**kl_vs_float(model, float_model, rows), "seconds": round(time.perf_counter() - t, 1),
                             "avg_bits": round(_uniform_bits(float_model, args.uniform), 4)}
    del model, ar

    t = time.perf_counter()
    auto = AutoScheme(avg_bits=target, options=tuple(args.options.split(",")))
    ar = AutoRound(clone(float_model), tok, scheme=auto, **common)
    model, _ = ar.quantize()
    record = ar.settings()["auto_scheme"]
    counts: dict[str, int] = {}
    for o in record["layers"].values():
        counts[o] = counts.get(o, 0) + 1
    results["autoscheme"] = {**kl_vs_float(model, float_model, rows), "seconds": round(time.perf_counter() - t, 1),
                             "avg_bits": record["achieved_avg_bits"], "layers_per_option": counts}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
