"""CPU inference of SmolLM2-135M W4A16 (RTN, group 128 and 32): packed backends vs float vs llama.cpp.

    python benchmarks/inference_speed.py [--threads 2] [--decode_steps 32] [--repeats 3] [--skip llama.cpp]
    python benchmarks/inference_speed.py --float DIR --quantized DIR [--quantized DIR2] [--gguf FILE]

With ``--float``/``--quantized`` the same rows run on any model (e.g. benchmarks/synthetic.py's
Llama-3.2-1B-shaped checkpoint and its W4A16 auto_round output): float fp32/bf16 from ``--float``, each
``--quantized`` folder packed (bf16) and dequantized (fp32), llama.cpp only for the ``--gguf`` files given.

Each row runs in its own subprocess (so its load peak RSS is its own), same threads, same prompt:

- ``linear MiB``: resident bytes of the quantized Linears' tensors (float rows: the same Linears' weights),
  and ``vs bf16``: that over those Linears' bf16 size;
- ``load peak MiB``: VmHWM while loading, over the RSS after imports (``/proc/self/clear_refs``);
- ``prefill s``: one forward of a 512-token prompt (no cache, all logits), best of ``--repeats``;
- ``decode tok/s``: ``--decode_steps`` new tokens after that prompt through ``signround.inference.decode.
  greedy_decode`` (reserved KV cache, float32 single-query attention, oneDNN off for one-row matmuls): the
  same loop for every torch row, float ones included, so the ratios compare models, not loops; best of
  ``--repeats`` (the machine may be shared: the best run is the least disturbed one); ``transformers
  loop``: the same tokens with transformers' defaults (DynamicCache, SDPA), for reference.

Rows: float fp32 and bf16 (``from_pretrained``); signround ``load_quantized`` with the default (packed int4
kernel, bf16) for group 128 and 32, and ``backend="dequant"`` (fp32) for group 128; llama.cpp on q4_0 and
q4_k_m GGUFs requantized by llama.cpp from the Q4_1 GGUF the float model was dequantized from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

__all__ = ["main"]

PROMPT = 512
ROWS = ("float fp32", "float bf16", "packed w4g128 (bf16)", "packed w4g32 (bf16)", "dequant w4g128 (fp32)",
        "llama.cpp q4_0", "llama.cpp q4_k_m")


def _rss(key: str) -> int:
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1]) * 1024


def _checkpoint(group: int) -> Path:
    from signround import AutoRound
    from signround.testing import cache_dir, smollm2_hf_dir

    target = cache_dir() / f"bench-smollm2-w4g{group}-rtn"
    folder = target / f"smollm2-135m-instruct-f32-w4g{group}-auto_round"
    if not (folder / "config.json").is_file():
        ar = AutoRound(str(smollm2_hf_dir()), scheme="W4A16", group_size=group, iters=0, disable_opt_rtn=True,
                       dtype="float32", show_progress=False)
        ar.quantize_and_save(target, format="auto_round")
    return folder


def _gguf(mix: str) -> Path:
    import llama_cpp

    from signround.testing import cache_dir, smollm2_gguf_path

    out = cache_dir() / f"bench-smollm2-{mix}.gguf"
    if not out.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix.upper()}")
        params.allow_requantize = True
        if llama_cpp.llama_model_quantize(str(smollm2_gguf_path()).encode(), str(out).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not make {out}")
    return out


def _linear_bytes(model) -> tuple[int, int]:
    """(resident bytes of the decoder Linears' tensors, their bf16 weight size)."""
    resident = bf16 = 0
    for name, m in model.named_modules():
        if ".layers." not in name or not hasattr(m, "in_features") or list(m.children()):
            continue
        resident += sum(t.numel() * t.element_size() for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]
                        if t is not None)
        bf16 += m.in_features * m.out_features * 2
    return resident, bf16


def _transformers_loop(model, ids, steps: int) -> float:
    """Seconds for ``steps`` tokens with transformers' defaults (DynamicCache, its attention), for reference."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=nxt, cache=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return time.perf_counter() - t0


def _rows(args) -> list[tuple[str, str]]:
    """(row label, path) for every row not skipped: SmolLM2's defaults (checkpoints made here, outside the measured
    subprocesses), or the folders and files given."""
    skip = [x for x in args.skip.split(",") if x]
    if not args.quantized and not args.float:
        groups = {"packed w4g128 (bf16)": 128, "packed w4g32 (bf16)": 32, "dequant w4g128 (fp32)": 128}
        rows = [r for r in ROWS if not any(r.startswith(x) for x in skip)]
        return [(r, str(_checkpoint(groups[r])) if r in groups else str(_gguf(r.split()[-1]))
                 if r.startswith("llama.cpp") else "") for r in rows]
    if not (args.quantized and args.float):
        raise SystemExit("--float and --quantized go together (the float rows are the reference)")
    rows = [("float fp32", args.float), ("float bf16", args.float)]
    for q in args.quantized:
        rows += [(f"packed {Path(q).name} (bf16)", q), (f"dequant {Path(q).name} (fp32)", q)]
    rows += [(f"llama.cpp {Path(g).name}", g) for g in args.gguf]
    return [(r, path) for r, path in rows if not any(r.startswith(x) for x in skip)]


def _torch_row(row: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from signround.inference.decode import greedy_decode
    from signround.inference.load import load_quantized, model_skeleton
    from signround.testing import smollm2_hf_dir

    folder = Path(args.path) if args.path else None
    float_dir = folder if row.startswith("float") and folder else args.float or smollm2_hf_dir()
    model_skeleton(float_dir, torch.float32)  # transformers' lazy imports, outside the load peak
    open("/proc/self/clear_refs", "w").write("5")
    base = _rss("VmRSS")
    if row.startswith("float"):
        model = AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32 if "fp32" in row else torch.bfloat16)
    elif row.startswith("packed"):
        model = load_quantized(folder, dtype="bfloat16")
    else:
        model = load_quantized(folder, dtype="float32", backend="dequant")
    peak = _rss("VmHWM") - base
    model.eval()
    resident, bf16 = _linear_bytes(model)
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    prefill, decode, hf = [], [], []
    for rep in range(args.repeats + 1):
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            p_s = time.perf_counter() - t0
        result = greedy_decode(model, ids, args.decode_steps + 1)  # the first new token ends the prefill
        hf_s = _transformers_loop(model, ids, args.decode_steps) if args.transformers_loop else None
        if rep:  # the first round is a warm-up
            prefill.append(p_s)
            decode.append(result.decode_tokens_per_s)
            hf.append(args.decode_steps / hf_s if hf_s else 0.0)
    return dict(linear=resident, bf16=bf16, peak=peak, prefill=min(prefill), decode=max(decode), hf=max(hf))


def _llama_row(row: str, args) -> dict:
    import llama_cpp

    path = Path(args.path)
    open("/proc/self/clear_refs", "w").write("5")
    base = _rss("VmRSS")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=PROMPT + args.decode_steps + 8, n_threads=args.threads,
                          n_threads_batch=args.threads, n_batch=PROMPT, verbose=False)
    peak = _rss("VmHWM") - base
    ids = [int(i) for i in __import__("torch").randint(0, llm.n_vocab(), (PROMPT,),
                                                      generator=__import__("torch").Generator().manual_seed(0))]
    prefill, decode = [], []
    for rep in range(args.repeats + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        p_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for step in range(args.decode_steps):  # fixed tokens: the speed does not depend on which
            llm.eval([ids[step]])
        if rep:
            prefill.append(p_s)
            decode.append(args.decode_steps / (time.perf_counter() - t0))
    return dict(linear=path.stat().st_size, bf16=0, peak=peak, prefill=min(prefill), decode=max(decode))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads [2]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode_steps", type=int, default=32)
    p.add_argument("--transformers_loop", type=int, default=1, help="also time transformers' own loop [1]")
    p.add_argument("--skip", default="", help="comma-separated row prefixes to skip (e.g. llama.cpp,dequant)")
    p.add_argument("--float", help="float checkpoint folder for the float rows [SmolLM2-135M]")
    p.add_argument("--quantized", action="append", default=[],
                   help="quantized checkpoint folder (repeatable): a packed and a dequant row each [SmolLM2 W4 g128/g32]")
    p.add_argument("--gguf", action="append", default=[], help="GGUF file for a llama.cpp row (repeatable) [none "
                   "with --quantized]")
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row, print JSON
    p.add_argument("--path", help=argparse.SUPPRESS)  # internal: the row's folder or file
    args = p.parse_args(argv)
    if args.row:
        result = (_llama_row if args.row.startswith("llama.cpp") else _torch_row)(args.row, args)
        print(json.dumps(result))
        return 0
    rows = _rows(args)
    load_avg = os.getloadavg()[0]
    results = {}
    for row, path in rows:
        cmd = [sys.executable, __file__, "--row", row, "--path", path, "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--decode_steps", str(args.decode_steps),
               "--transformers_loop", str(args.transformers_loop)] + (["--float", args.float] if args.float else [])
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            print(f"{row}: failed: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results[row] = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{row}: {results[row]}", file=sys.stderr)
    f32, b16 = results.get("float fp32", {}), results.get("float bf16", {})
    print(f"\n{machine_line()}; threads {args.threads}; load average {load_avg:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end; best of {args.repeats}")
    print(f"| model | linear MiB | vs bf16 | load peak MiB | prefill {PROMPT} s | vs fp32 | decode tok/s | vs fp32 | "
          f"vs bf16 | transformers loop tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row, r in results.items():
        vs_bf16 = f"{r['linear'] / r['bf16']:.2f}x" if r["bf16"] else "(file)"
        rel_p = f"{r['prefill'] / f32['prefill']:.2f}x" if f32 else "-"
        rel_d = f"{r['decode'] / f32['decode']:.2f}x" if f32 else "-"
        rel_b = f"{r['decode'] / b16['decode']:.2f}x" if b16 else "-"
        loop = f"{r['hf']:.1f}" if r.get("hf") else "-"
        print(f"| {row} | {r['linear'] / 2**20:.1f} | {vs_bf16} | {r['peak'] / 2**20:.0f} | {r['prefill']:.3f} | "
              f"{rel_p} | {r['decode']:.1f} | {rel_d} | {rel_b} | {loop} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
