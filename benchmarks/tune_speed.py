"""Time one SignRound tuning iteration on a real SmolLM2-135M block, per precision and compile setting.

    python benchmarks/tune_speed.py [--threads 2] [--iters 10] [--batch 4] [--seqlen 512]

Prints seconds per iteration and the achieved FLOP/s (3 x 2 x block linear params x tokens per
iteration, the issue's formula) as a fraction of this machine's measured float32 matmul throughput.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import machine_line, matmul_gflops
from signround.model.arch import arch_facts, get_module
from signround.model.capture import capture_block_args, capture_first_block_inputs, run_block
from signround.model.loading import load_model
from signround.plan import build_plan
from signround.schemes import resolve_scheme
from signround.testing import smollm2_hf_dir
from signround.tune.layer import make_layer_state
from signround.tune.signround import SignRoundConfig, tune_block


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    fp32 = matmul_gflops(torch.float32)
    print(f"float32 matmul (2048^3): {fp32:.0f} GFLOP/s; bfloat16: {matmul_gflops(torch.bfloat16):.0f} GFLOP/s")

    model = load_model(str(smollm2_hf_dir()), dtype="float32").model
    arch = arch_facts(model)
    blocks = get_module(model, arch.blocks)
    plan = build_plan(model, arch, resolve_scheme("W4A16"))
    ids = torch.randint(0, model.config.vocab_size, (2 * args.batch, args.seqlen), generator=torch.Generator().manual_seed(0))
    block_args = capture_block_args(model, blocks, ids[:1])
    x = capture_first_block_inputs(model, blocks[0], ids, args.batch, torch.float32)
    block = blocks[3]
    block.requires_grad_(False)
    with torch.no_grad():
        y = run_block(block, x, block_args[3])
    prefix = f"{arch.blocks}.3."
    layers = plan.block_layers(3)
    params = sum(block.get_submodule(p.name[len(prefix):]).weight.numel() for p in layers)
    flops = 3 * 2 * params * args.batch * args.seqlen
    print(f"block linear params {params / 1e6:.2f} M, {flops / 1e9:.1f} GFLOP per iteration")
    print(f"{'tune dtype':10s} {'compile':8s} {'s/iter':>8s} {'GFLOP/s':>8s} {'of fp32 peak':>12s}")
    for dtype in (None, torch.bfloat16):
        for compile_fq in (False, True):
            states = [make_layer_state(p, p.name[len(prefix):], block.get_submodule(p.name[len(prefix):]).weight)
                      for p in layers]
            cfg = SignRoundConfig(iters=args.iters + 1, batch_size=args.batch, eval_every=10**6,
                                  enable_torch_compile=compile_fq)
            seen: list[float] = []
            tune_block(block, states, x, y, block_args[3], None, torch.arange(args.batch), torch.arange(args.batch, 2 * args.batch),
                       cfg, autocast_dtype=dtype, on_step=lambda i: seen.append(time.perf_counter()))
            per_iter = (seen[-1] - seen[0]) / (len(seen) - 1)  # the first step (compilation, warm-up) excluded
            name = "bfloat16" if dtype else "float32"
            print(f"{name:10s} {str(compile_fq):8s} {per_iter:8.3f} {flops / per_iter / 1e9:8.0f} {flops / per_iter / 1e9 / fp32:11.0%}")


if __name__ == "__main__":
    main()
