"""GGUF AutoScheme on SmolLM2-135M at the size of uniform q3_k_s, against q3_k_s itself; KL measured by llama.cpp.

    python benchmarks/autoscheme_gguf.py [--options GGUF:Q3_K_S,GGUF:Q2_K_S,GGUF:Q4_K_S] [--mix q3_k_s]
                                         [--nsamples 64] [--seqlen 256] [--windows 6] [--ctx 512] [--threads 1]
                                         [--workdir DIR] [--record]

Both files are written by the public API with the same method (optimised RTN, ``iters 0``) and the same
calibration (``--nsamples`` x ``--seqlen`` tokens of the bundled corpus), in the same mix (``--mix``), so every
tensor outside the Linear layers (the tied token_embd, norms) is the same type in both:

- ``uniform``: ``format=gguf:<mix>``, llama.cpp's per-tensor types for the mix;
- ``autoscheme``: ``scheme=AutoScheme(avg_bits=T, options=...)``, ``format=gguf:<mix>``, where T is the mix's
  own bits per Linear weight as ``signround/autoscheme/bits.py`` counts them over the same layers (the real
  block bytes, llama.cpp's shape fallbacks included): the AutoScheme file is at most the uniform file's size.

Both files run in llama.cpp on the same held-out windows as ``gguf_quality.py`` (its ``llama_cpp_eval``); the
reference is llama.cpp running the f32 GGUF of the model. KL = mean KL(P_f32 || P_file) per position.

Why the default options: on SmolLM2 every Linear but ffn_down has 576-wide rows, which no k-quant block (256)
divides, so llama.cpp falls back: Q2_K and Q3_K -> Q4_0 (4.5 bpw), Q4_K -> Q5_0 (5.5). The options
GGUF:Q2_K_S, GGUF:Q3_K_S, GGUF:Q4_K_S thus give ffn_down {Q2_K 2.625, Q3_K 3.4375, Q4_K 4.5} and the other
layers {Q4_0, Q5_0}: q3_k_s's own types plus one step down and one up for every layer. Left out on purpose:
Q4_1 and Q5_1, whose grids hold the test model's weights exactly (the offline "float" SmolLM2 is a dequantized
Q4_1 GGUF), so choosing them would win by an artefact of this model. The first option names the mix (an
AutoScheme of GGUF options takes its default format, and the mix it must agree with, from its first option).

``--record`` writes the table, the machine, the date, the commit and the load into ``benchmarks/RESULTS.md`` under
``## AutoScheme (GGUF)`` (replacing that section, appended at the end the first time).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

HEADING = "## AutoScheme (GGUF)"
RESULTS = HERE / "RESULTS.md"
DEFAULT_OPTIONS = "GGUF:Q3_K_S,GGUF:Q2_K_S,GGUF:Q4_K_S"


def linear_bits(plan) -> tuple[int, int]:
    """(bits, weights) of the plan's quantized Linear layers, as AutoScheme counts them."""
    from signround.autoscheme.bits import layer_bits

    layers = plan.quantized()
    return sum(layer_bits(p.scheme, p.shape) for p in layers), sum(p.shape[0] * p.shape[1] for p in layers)


def file_facts(path: Path) -> dict:
    """Bytes of the whole file and of its blk.* 2-D tensors (the Linear layers), and the count of each type there."""
    import gguf

    linear, types = 0, {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            linear += int(t.n_bytes)
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"file_bytes": path.stat().st_size, "linear_bytes": linear, "types": dict(sorted(types.items()))}


def quantize(model, tok, args, folder: Path, scheme=None) -> tuple[Path, float, object]:
    """One GGUF file through the public API; returns (the .gguf, seconds, the AutoRound object)."""
    from signround import AutoRound

    kw = {} if scheme is None else {"scheme": scheme}
    ar = AutoRound(copy.deepcopy(model), tok, iters=0, nsamples=args.nsamples, seqlen=args.seqlen,
                   batch_size=args.batch_size, dataset="signround:bundled", show_progress=False, **kw)
    t0 = time.perf_counter()
    out = ar.quantize_and_save(folder, format=f"gguf:{args.mix}")[0]
    return next(out.glob("*.gguf")), time.perf_counter() - t0, ar


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_line() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def record(table: str, settings: str) -> None:
    """Replace this section of RESULTS.md, or append it at the end."""
    section = f"{HEADING}\n\n{settings}\n\n```\n{table}\n```\n"
    text = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")


def option_counts(choice: dict) -> list[tuple[str, int]]:
    """(option, how many layers took it) of one AutoScheme record."""
    counts: dict[str, int] = {}
    for option in choice["layers"].values():
        counts[option] = counts.get(option, 0) + 1
    return sorted(counts.items())


def format_table(rows: list[tuple[str, ...]]) -> str:
    header = ("file", "KL (llama.cpp)", "vs uniform", "PPL", "Linear bpw", "Linear MB", "file MB", "seconds")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [header, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--options", action="append",
                    help=f"comma-separated AutoScheme options, repeatable (one row each) [{DEFAULT_OPTIONS}]; the "
                         f"first must name --mix (signround takes the GGUF format's mix from it)")
    ap.add_argument("--mix", default="q3_k_s", help="the uniform mix whose size the AutoScheme file matches")
    from gguf_quality import add_run_arguments

    add_run_arguments(ap)  # calibration (both files), windows, threads, workdir, record
    args = ap.parse_args()
    args.options = args.options or [DEFAULT_OPTIONS]

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("signround.autoscheme").setLevel(logging.INFO)  # the choice table and the sensitivity time
    from common import load_smollm2, machine_line
    from gguf_quality import llama_cpp_eval

    from signround import AutoRound, AutoScheme
    from signround.calib import heldout_text
    from signround.eval.metrics import windows
    from signround.export.gguf import export_gguf

    load_before = load_line()
    lm = load_smollm2()
    model, tok = lm.model, lm.tokenizer
    rows = windows(tok(heldout_text(), return_tensors="pt").input_ids, args.ctx, args.windows)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="autoscheme_gguf."))
    work.mkdir(parents=True, exist_ok=True)
    ref = llama_cpp_eval(export_gguf(model, tok, work / "f32.gguf", "f32"), rows, None, args.threads)
    print(f"f32 reference in llama.cpp: PPL {ref['ppl']:.3f} on {ref['tokens']} predicted tokens", flush=True)

    uniform_plan = AutoRound(model, tok, iters=0, show_progress=False).plan(f"gguf:{args.mix}")
    bits, weights = linear_bits(uniform_plan)
    target = bits / weights
    print(f"target: gguf:{args.mix} = {bits} bits over {weights} Linear weights = {target:.6f} bpw", flush=True)

    results = {}
    path, secs, _ = quantize(model, tok, args, work / "uniform")
    results[f"uniform gguf:{args.mix}"] = (path, secs, target)
    choices, achieved = {}, {}
    for i, options in enumerate(args.options):
        auto = AutoScheme(avg_bits=target, options=tuple(options.split(",")))
        path, secs, ar = quantize(model, tok, args, work / f"autoscheme{i}", scheme=auto)
        name = f"autoscheme {{{options.replace('GGUF:', '')}}}"
        choices[name] = ar.settings()["auto_scheme"]
        auto_bits, auto_weights = linear_bits(ar._plan)
        assert auto_weights == weights and set(choices[name]["layers"]) == {p.name for p in uniform_plan.quantized()}, \
            "AutoScheme chose over other layers than the uniform mix quantizes"
        assert auto_bits <= bits, (auto_bits, bits)
        results[name], achieved[name] = (path, secs, auto_bits / auto_weights), auto_bits

    rows_out, kl_uniform, facts = [], None, {}
    for name, (path, secs, bpw) in results.items():
        res = llama_cpp_eval(path, rows, ref["logps"], args.threads)
        facts[name] = file_facts(path)
        kl_uniform = kl_uniform if kl_uniform is not None else res["kl"]
        rows_out.append((name, f"{res['kl']:.5f}", f"{res['kl'] / kl_uniform:.3f}x", f"{res['ppl']:.3f}",
                         f"{bpw:.4f}", f"{facts[name]['linear_bytes'] / 1e6:.3f}",
                         f"{facts[name]['file_bytes'] / 1e6:.3f}", f"{secs:.1f}"))
        print("  ".join(rows_out[-1]), flush=True)
    table = format_table(rows_out)
    command = (f"python benchmarks/autoscheme_gguf.py {' '.join('--options ' + o for o in args.options)} "
               f"--mix {args.mix} --nsamples {args.nsamples} --seqlen {args.seqlen} --windows {args.windows} "
               f"--ctx {args.ctx} --threads {args.threads}")
    notes = [
        f"`{command}` on {machine_line()}, commit {git_commit()}; {load_before} before, {load_line()} after.",
        f"Every file: optimised RTN (iters 0), imatrix and AutoScheme sensitivity from {args.nsamples} x "
        f"{args.seqlen} tokens of the bundled corpus, written as gguf:{args.mix} (same non-Linear tensors). "
        f"Target = gguf:{args.mix}'s {bits} bits over the {weights} Linear weights = {target:.4f} bpw "
        f"(signround/autoscheme/bits.py); achieved: " + ", ".join(f"{n} {b} bits" for n, b in achieved.items()) +
        f". KL(P_f32 || P_file) per position and PPL from llama.cpp on {ref['tokens']} predicted tokens of the "
        f"bundled held-out text (f32 GGUF PPL {ref['ppl']:.3f}). 'seconds': whole quantize + export, AutoScheme "
        f"rows including the sensitivity pass (machine shared: upper bounds).",
        "Linear tensor types: " + "; ".join(f"{n}: " + ", ".join(f"{c} {t}" for t, c in f["types"].items())
                                            for n, f in facts.items()) + ".",
        "Layers per option: " + "; ".join(f"{n}: " + ", ".join(f"{o} {c}" for o, c in option_counts(choice))
                                          for n, choice in choices.items()) + ".",
    ]
    print("\n".join(notes))
    print(table)
    (work / "choices.json").write_text(json.dumps(choices, indent=1))
    if args.record:
        record(table, "\n".join(notes))
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
