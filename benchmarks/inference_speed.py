"""CPU inference speed of SmolLM2-135M W4A16 (group 64): our torch backend vs the float model vs auto-round's.

    python benchmarks/inference_speed.py [--checkpoint DIR] [--threads 1] [--repeats 5] [--decode_steps 32]

Without ``--checkpoint`` the model is quantized with plain RTN (W4A16, group 64: 128 does not divide
SmolLM2's 576, real-loaders §2e) into the auto_round format under the signround cache, once.
Rows (each the median of ``--repeats`` runs, after one warm-up):

- ``prefill``: one forward of a 512-token prompt (no cache), tokens/s;
- ``decode``: after a 512-token prefill with KV cache, ``--decode_steps`` single-token forwards, tokens/s.

Loaders: the float model (fp32), ``signround.load_quantized`` (torch backend: dequantized once at
load, fp32 and fp16 compute), and transformers + auto-round's torch backend (``AutoRoundConfig(backend=
"torch")``, which forces fp16 on CPU and re-dequantizes every weight on every forward).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

__all__ = ["main"]

PROMPT = 512


def _checkpoint() -> Path:
    from signround import AutoRound
    from signround.testing import cache_dir, smollm2_hf_dir

    target = cache_dir() / "bench-smollm2-w4g64-rtn"
    folder = target / "smollm2-135m-instruct-f32-w4g64-auto_round"
    if not (folder / "config.json").is_file():
        ar = AutoRound(str(smollm2_hf_dir()), scheme="W4A16", group_size=64, iters=0, disable_opt_rtn=True,
                       dtype="float32", show_progress=False)
        ar.quantize_and_save(target, format="auto_round")
    return folder


@torch.inference_mode()
def _prefill_seconds(model: torch.nn.Module, ids: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    return time.perf_counter() - t0


@torch.inference_mode()
def _decode_seconds(model: torch.nn.Module, ids: torch.Tensor, steps: int) -> float:
    """Seconds for ``steps`` single-token forwards after a prefill of ``ids`` with KV cache."""
    out = model(input_ids=ids, use_cache=True)
    cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, cache=cache, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return time.perf_counter() - t0


def _loaders(folder: Path, float_dir: Path):
    from transformers import AutoModelForCausalLM

    from signround.inference.load import load_quantized

    yield "float (fp32)", lambda: AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32)
    yield "signround torch backend (fp32)", lambda: load_quantized(folder, dtype="float32")
    yield "signround torch backend (fp16)", lambda: load_quantized(folder, dtype="float16")

    def auto_round():
        from transformers import AutoRoundConfig

        return AutoModelForCausalLM.from_pretrained(folder, device_map="cpu",
                                                    quantization_config=AutoRoundConfig(backend="torch"))

    yield "auto-round torch backend (fp16, forced)", auto_round


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="an auto_round W4A16 checkpoint of SmolLM2 [quantized once with RTN]")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads [1: on a shared 2-core machine, 2 threads spin-wait on the busy core, ~20x slower]")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--decode_steps", type=int, default=32)
    p.add_argument("--skip", default="", help="comma-separated row prefixes to skip")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from signround.testing import smollm2_hf_dir

    folder = Path(args.checkpoint) if args.checkpoint else _checkpoint()
    ids = torch.randint(0, 49152, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    load_avg = os.getloadavg()[0]
    models = {name: make().eval() for name, make in _loaders(folder, smollm2_hf_dir())
              if not any(name.startswith(x) for x in args.skip.split(",") if x)}
    prefill: dict[str, list[float]] = {n: [] for n in models}
    decode: dict[str, list[float]] = {n: [] for n in models}
    for rep in range(args.repeats + 1):  # the loaders take turns, so a change in machine load hits them alike
        for name, model in models.items():
            gc.collect()
            p_s, d_s = _prefill_seconds(model, ids), _decode_seconds(model, ids, args.decode_steps)
            if rep:  # the first round is a warm-up
                prefill[name].append(p_s)
                decode[name].append(d_s)
    rows = [(n, PROMPT / statistics.median(prefill[n]), args.decode_steps / statistics.median(decode[n])) for n in models]
    base_prefill = rows[0][1]
    print(f"\n{machine_line()}; torch threads {args.threads}; load average {load_avg:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end; median of {args.repeats}")
    print(f"| loader | prefill {PROMPT} tok/s | time vs float | decode tok/s |")
    print("|---|---|---|---|")
    for name, prefill, decode in rows:
        print(f"| {name} | {prefill:.1f} | {base_prefill / prefill:.2f}x | {decode:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
