"""Peak memory and time of quantizing big models, on synthetic checkpoints with real shapes.

    python benchmarks/scale.py                         # every default scenario (8B, 1B, SmolLM2 rows)
    python benchmarks/scale.py --only ci-rtn ci-optrtn # some scenarios (see --list)
    python benchmarks/scale.py --only 1b-signround --iters 5   # fewer SignRound iterations (time only)

Checkpoints (``benchmarks/synthetic.py``): random bf16 weights with the shapes of Llama-3.1-8B (16 GB)
and Llama-3.2-1B (2.5 GB), and ``ci-100m`` (~113M parameters, float32, 4 shards), written once under
``~/.cache/signround/scale/`` (``--root``) and reused. SmolLM2 rows use the real model
(``signround.testing.smollm2_hf_dir()``).

Every quantization runs in a **child process**; the parent records:

- ``wall s``: the child's wall time, start to exit (Python start-up, imports, loading and writing included);
- ``peak RSS``: the child's ``ru_maxrss`` from ``os.wait4`` (the kernel's high-water mark of resident
  memory, file-backed pages of memory-mapped safetensors included). For a launcher like torchrun,
  ``wait4`` reports the maximum over the launcher and the workers it has waited for, i.e. the
  **largest single process**, not their sum; hence also
- ``tree peak``: the largest **sum** of the RSS of the child and all its descendants, sampled from
  /proc every 0.1 s (can miss a spike shorter than that; for one process it is a lower bound of
  ``peak RSS``). For torchrun rows, this is the figure to compare with a single process.

RTN rows are also checked for correctness: a few layers are read back from the output (only their
tensors, with ``signround.inference.checkpoint``'s decoder) and their dequantized weights compared with
the same source tensors rounded on their own by ``signround.quant.int`` (min/max range, round to
nearest): they must be identical.

Prints a markdown table and writes ``benchmarks/results/scale-<UTC date>.json`` (``--json``) with the
machine (CPU, cores, RAM, load averages) and the signround commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import synthetic  # noqa: E402

GiB = 1024**3
GB = 1000**3


# ----------------------------------------------------------------------------------------------- measuring
def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Polls the summed RSS of a process and its descendants; ``peak`` = the largest sum seen."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.procs = pid, every, 0, 1
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            tree, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                tree.append(p)
                todo += _children(p)
            self.peak = max(self.peak, sum(_rss_bytes(p) for p in tree))
            self.procs = max(self.procs, len(tree))
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_measured(cmd: list[str], log: Path, env: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``cmd`` (output to ``log``); its wall time, ``ru_maxrss`` (wait4) and sampled tree RSS."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    load_before = loadavg()
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO))
        sampler = TreeSampler(p.pid)
        sampler.start()
        timer = threading.Timer(timeout, p.kill) if timeout else None
        if timer:
            timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        if timer:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
    wall = time.perf_counter() - t0
    return {"rc": p.returncode, "wall_s": wall, "peak_rss_bytes": ru.ru_maxrss * 1024,  # Linux: KiB
            "tree_peak_bytes": sampler.peak, "processes": sampler.procs, "user_s": ru.ru_utime,
            "sys_s": ru.ru_stime, "load_before": load_before, "load_after": loadavg(),
            "cmd": " ".join(cmd), "env": env or {}, "log": str(log)}


def _tail(path: str, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------- checks
def output_folder(parent: Path) -> Path:
    """The one exported model directory under ``parent`` (signround/AutoRound make a child per format)."""
    found = sorted(c.parent for c in parent.rglob("config.json") if "quantization_config" in c.read_text())
    if len(found) != 1:
        raise RuntimeError(f"expected one quantized model under {parent}, found {[str(f) for f in found]}")
    return found[0]


def _source_tensor(src: Path, name: str):
    from safetensors import safe_open

    index = src / "model.safetensors.index.json"
    fname = json.loads(index.read_text())["weight_map"][name] if index.is_file() else "model.safetensors"
    with safe_open(str(src / fname), framework="pt") as h:
        return h.get_tensor(name)


def read_layer(out: Path, name: str):
    """Decode one packed layer of an exported checkpoint, reading only that layer's tensors."""
    from safetensors import safe_open

    from signround.inference.checkpoint import INDEX_FILE, parse_quant_config, read_config
    from signround.inference.layouts import decode_layer

    config = read_config(out)
    view = parse_quant_config(config, out)
    spec = view.resolve([name])[name]
    index = out / INDEX_FILE
    if index.is_file():  # only the shards holding this layer's tensors (they may straddle two)
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({out / f for k, f in weight_map.items() if k.rsplit(".", 1)[0] == name})
    else:
        files = sorted(out.glob("*.safetensors"))
    tensors, where = {}, {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                if k.rsplit(".", 1)[0] == name:
                    tensors[k], where[k] = h.get_tensor(k), str(f)
    return decode_layer(view.layout, name, tensors, where, spec), spec


def rtn_reference(weight, bits: int, group_size: int, sym: bool):
    """The weight rounded on its own by signround's RTN functions (min/max range, round to nearest)."""
    from signround.quant.grouping import from_groups, to_groups
    from signround.quant.int import minmax_init, quantize_groups

    w = weight.float()
    wg = to_groups(w, group_size)
    return from_groups(quantize_groups(wg, minmax_init(wg, bits, sym))[0], w.shape[1])


def check_rtn_layers(out: Path, src: Path, names: list[str]) -> dict:
    """Each layer's dequantized weight in ``out`` vs RTN of its source tensor: max |difference| per layer."""
    import torch

    result = {}
    for name in names:
        qw, spec = read_layer(out, name)
        ref = rtn_reference(_source_tensor(src, name + ".weight"), spec.bits, spec.group_size, spec.sym)
        got = qw.dequantize(torch.float32)
        result[name] = float((got - ref).abs().max()) if got.shape == ref.shape else float("inf")
    return result


def check_layers_for(layers: int) -> list[str]:
    return ["model.layers.0.self_attn.q_proj", f"model.layers.{layers // 2}.mlp.down_proj",
            f"model.layers.{layers - 1}.mlp.gate_proj", f"model.layers.{layers - 1}.self_attn.k_proj"]


# ----------------------------------------------------------------------------------------------- children
def child_api(model_dir: str, out: str, options_json: str) -> None:
    """signround's Python API on a model first loaded whole by transformers (the in-memory path)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from signround import AutoRound

    opts = json.loads(options_json)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=opts.pop("load_dtype", "auto"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    if "ids" in opts:
        opts["dataset"] = torch.load(opts.pop("ids"))
    AutoRound(model, tok, scheme=opts.pop("scheme", "W4A16"), show_progress=False, **opts).quantize_and_save(
        out, format="auto_round")


def child_signround_path(model_dir: str, out: str, options_json: str) -> None:
    """signround's Python API given the model's path (signround loads it), calibration ids from a file."""
    import torch

    from signround import AutoRound

    opts = json.loads(options_json)
    if "ids" in opts:
        opts["dataset"] = torch.load(opts.pop("ids"))
    AutoRound(model_dir, scheme=opts.pop("scheme", "W4A16"), show_progress=False, **opts).quantize_and_save(
        out, format="auto_round")


def child_autoround(model_dir: str, out: str, options_json: str) -> None:
    """AutoRound (PyPI auto-round) given the model's path, calibration ids from a file."""
    import torch
    from auto_round import AutoRound as AR

    opts = json.loads(options_json)
    ids = torch.load(opts.pop("ids"))
    ar = AR(model_dir, scheme=opts.pop("scheme", "W4A16"), device_map="cpu",
            dataset=[r.unsqueeze(0) for r in ids], **opts)
    ar.quantize_and_save(out, format="auto_round")


CHILDREN: dict[str, Callable[[str, str, str], None]] = {
    "api": child_api, "signround-path": child_signround_path, "autoround": child_autoround}


# ----------------------------------------------------------------------------------------------- scenarios
@dataclass
class Ctx:
    root: Path
    work: Path
    iters: int | None  # override of the SignRound iterations (None: each scenario's own)
    kl_windows: int
    timeout: float | None
    rows: list[dict] = field(default_factory=list)

    def ckpt(self, name: str) -> Path:
        print(f"checkpoint {name} ...", flush=True)
        return synthetic.build(name, self.root, log=lambda m: print(m, flush=True))

    def out(self, tag: str) -> Path:
        d = self.work / tag
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def sr_iters(self, default: int) -> int:
        return default if self.iters is None else self.iters


def _cli(model: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "signround", "--model", str(model), "--scheme", "W4A16", "--format", "auto_round",
            "--output_dir", str(out), "-q", *args]


def _child_cmd(kind: str, model: Path, out: Path, opts: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(model), str(out), json.dumps(opts)]


def _row(ctx: Ctx, scenario: str, model: str, method: str, calib: str, goal: float | None, goal_text: str,
         cmd: list[str], env: dict | None = None, check: Callable[[Path], dict] | None = None, **extra) -> dict:
    out = Path(cmd[cmd.index("--output_dir") + 1]) if "--output_dir" in cmd else Path(cmd[-2])
    tag = out.name
    print(f"[{scenario}] {method} on {model}: load average {loadavg()} ...", flush=True)
    m = run_measured(cmd, ctx.work / f"{tag}.log", env, ctx.timeout)
    row = {"scenario": scenario, "model": model, "method": method, "calibration": calib, "goal_bytes": goal,
           "goal": goal_text, **m, **extra}
    if m["rc"] != 0:
        row["error"] = _tail(m["log"])
        print(f"  FAILED (exit {m['rc']}), log {m['log']}:\n{row['error']}", flush=True)
    elif check is not None:
        try:
            row["check"] = check(output_folder(out))
        except Exception as e:  # noqa: BLE001 - a failed check is a result, recorded in the row
            row["check"] = {"error": f"{type(e).__name__}: {e}"}
    row["met"] = None if goal is None or m["rc"] != 0 else m["peak_rss_bytes"] < goal
    print(f"  {m['wall_s']:.1f} s, peak RSS {m['peak_rss_bytes'] / GiB:.2f} GiB, tree peak "
          f"{m['tree_peak_bytes'] / GiB:.2f} GiB, check {row.get('check', '-')}", flush=True)
    ctx.rows.append(row)
    return row


def _rtn_check(src: Path, layers: int) -> Callable[[Path], dict]:
    return lambda out: check_rtn_layers(out, src, check_layers_for(layers))


def _rtn_rows(ctx: Ctx, scenario: str, ckpt_name: str, label: str, goal: float | None, goal_text: str,
              opt: bool, nsamples: int, seqlen: int) -> None:
    src = ctx.ckpt(ckpt_name)
    spec = synthetic.SPECS[ckpt_name]
    args = ["--iters", "0", "--nsamples", str(nsamples), "--seqlen", str(seqlen)]
    if not opt:
        args.append("--disable_opt_rtn")
    _row(ctx, scenario, label, "opt-RTN" if opt else "RTN", f"{nsamples} x {seqlen}" if opt else "none (RTN)",
         goal, goal_text, _cli(src, ctx.out(scenario), *args),
         check=None if opt else _rtn_check(src, spec.layers))


def sc_8b_rtn(ctx: Ctx) -> None:
    """Llama-3.1-8B shapes (16 GB bf16, 4 shards), plain RTN W4A16; goal peak RSS < 3 GiB; read-back check."""
    _rtn_rows(ctx, "8b-rtn", "llama-3.1-8b", "Llama-3.1-8B shapes", 3 * GiB, "< 3 GiB", False, 32, 512)


def sc_8b_optrtn(ctx: Ctx) -> None:
    """Llama-3.1-8B shapes, optimised RTN (iters 0), 32 x 512 calibration; goal < 3 GiB."""
    _rtn_rows(ctx, "8b-optrtn", "llama-3.1-8b", "Llama-3.1-8B shapes", 3 * GiB, "< 3 GiB", True, 32, 512)


def sc_1b_rtn(ctx: Ctx) -> None:
    """Llama-3.2-1B shapes (2.5 GB bf16), plain RTN; goal < 1.2 GB; read-back check."""
    _rtn_rows(ctx, "1b-rtn", "llama-3.2-1b", "Llama-3.2-1B shapes", 1.2 * GB, "< 1.2 GB", False, 8, 256)


def sc_1b_optrtn(ctx: Ctx) -> None:
    """Llama-3.2-1B shapes, optimised RTN, 8 x 256 calibration; goal < 1.2 GB."""
    _rtn_rows(ctx, "1b-optrtn", "llama-3.2-1b", "Llama-3.2-1B shapes", 1.2 * GB, "< 1.2 GB", True, 8, 256)


def _signround_pair(ctx: Ctx, scenario: str, ckpt_name: str, label: str, goal: float | None, goal_text: str,
                    iters: int, nsamples: int, seqlen: int) -> None:
    """The CLI on the checkpoint's path (streaming path) and the API on a model loaded whole (in memory)."""
    src = ctx.ckpt(ckpt_name)
    it = ctx.sr_iters(iters)
    calib = f"{nsamples} x {seqlen}"
    _row(ctx, scenario, label, f"SignRound {it} iters (CLI)", calib, goal, goal_text,
         _cli(src, ctx.out(scenario + "-cli"), "--iters", str(it), "--nsamples", str(nsamples), "--seqlen",
              str(seqlen)))
    _row(ctx, scenario, label, f"SignRound {it} iters (API, model loaded whole)", calib, None, "(comparison)",
         _child_cmd("api", src, ctx.out(scenario + "-api"), {"iters": it, "nsamples": nsamples, "seqlen": seqlen}))


def sc_1b_signround(ctx: Ctx) -> None:
    """Llama-3.2-1B shapes, SignRound 25 iters, 32 x 512: CLI (goal < 4 GiB) and API on a model loaded whole."""
    _signround_pair(ctx, "1b-signround", "llama-3.2-1b", "Llama-3.2-1B shapes", 4 * GiB, "< 4 GiB", 25, 32, 512)


# the CI-sized checkpoint: the smoke test of this script (no goals; the CI test bounds ci-rtn's memory)
def sc_ci_baseline(ctx: Ctx) -> None:
    """ci-100m cut to one block, plain RTN (the CI test's baseline)."""
    _rtn_rows(ctx, "ci-1layer-rtn", "ci-1layer", "ci-100m cut to 1 block (44M, f32)", None, "-", False, 8, 256)


def sc_ci_rtn(ctx: Ctx) -> None:
    """ci-100m (113M f32, 4 shards), plain RTN; read-back check (the CI test's command)."""
    _rtn_rows(ctx, "ci-rtn", "ci-100m", "ci-100m (113M, f32)", None, "-", False, 8, 256)


def sc_ci_optrtn(ctx: Ctx) -> None:
    """ci-100m, optimised RTN, 8 x 256 calibration."""
    _rtn_rows(ctx, "ci-optrtn", "ci-100m", "ci-100m (113M, f32)", None, "-", True, 8, 256)


def sc_ci_signround(ctx: Ctx) -> None:
    """ci-100m, SignRound 5 iters, 8 x 256: CLI and API on a model loaded whole."""
    _signround_pair(ctx, "ci-signround", "ci-100m", "ci-100m (113M, f32)", None, "-", 5, 8, 256)


# SmolLM2: signround vs AutoRound 0.16, and data-parallel tuning
VS_AR = {"nsamples": 32, "seqlen": 512, "batch_size": 4}


def _calib_ids(ctx: Ctx, nsamples: int, seqlen: int) -> str:
    """The same calibration ids for every tool: signround's bundled corpus, seed 42 (as vs_autoround.py)."""
    import torch
    from transformers import AutoTokenizer

    from signround.calib import get_calibration_data
    from signround.testing import smollm2_hf_dir

    path = ctx.work / f"ids-{nsamples}x{seqlen}.pt"
    if not path.is_file():
        tok = AutoTokenizer.from_pretrained(smollm2_hf_dir())
        torch.save(get_calibration_data(tok, None, nsamples=nsamples, seqlen=seqlen, seed=42).input_ids, path)
    return str(path)


def sc_smollm2_vs_autoround(ctx: Ctx) -> None:
    """Both tools given SmolLM2's path, the same ids, W4A16, float32, no torch.compile, few iterations."""
    from signround.testing import smollm2_hf_dir

    src = smollm2_hf_dir()
    it = ctx.sr_iters(5)
    ids = _calib_ids(ctx, VS_AR["nsamples"], VS_AR["seqlen"])
    calib = f"{VS_AR['nsamples']} x {VS_AR['seqlen']}, batch {VS_AR['batch_size']}"
    _row(ctx, "smollm2-vs-autoround", "SmolLM2-135M", f"signround {it} iters (API, path)", calib, None, "-",
         _child_cmd("signround-path", src, ctx.out("vs-signround"),
                    {**VS_AR, "iters": it, "ids": ids, "tune_dtype": "float32", "enable_torch_compile": False}))
    _row(ctx, "smollm2-vs-autoround", "SmolLM2-135M", f"AutoRound 0.16 {it} iters (API, path)", calib, None, "-",
         _child_cmd("autoround", src, ctx.out("vs-autoround"),
                    {**VS_AR, "iters": it, "ids": ids, "amp": False, "enable_torch_compile": False}))


def sc_dp(ctx: Ctx) -> None:
    """torchrun with 2 ranks x 1 thread vs 1 process x 2 threads: time, and KL of each output vs float."""
    from signround.testing import smollm2_hf_dir

    src = smollm2_hf_dir()
    it = ctx.sr_iters(10)
    args = ["--iters", str(it), "--nsamples", "32", "--seqlen", "512", "--batch_size", "8", "--tune_dtype", "float32"]
    calib = "32 x 512, batch 8"
    one = ctx.out("dp-1proc")
    two = ctx.out("dp-torchrun2")
    rows = [
        _row(ctx, "dp", "SmolLM2-135M", f"SignRound {it} iters, 1 process x 2 threads", calib, None, "-",
             _cli(src, one, *args), env={"OMP_NUM_THREADS": "2"}),
        _row(ctx, "dp", "SmolLM2-135M", f"SignRound {it} iters, torchrun 2 ranks x 1 thread", calib, None, "-",
             [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "signround",
              *_cli(src, two, *args)[3:]], env={"OMP_NUM_THREADS": "1"}),
    ]
    if any(r["rc"] != 0 for r in rows):
        return
    from common import heldout_rows, kl_vs_float, load_smollm2

    from signround import load_quantized

    lm = load_smollm2()
    held = heldout_rows(lm.tokenizer, 512, ctx.kl_windows)
    for row, out in zip(rows, (one, two)):
        res = kl_vs_float(load_quantized(output_folder(out)), lm.model, held)
        row["kl"], row["ppl"], row["ppl_float"] = res["kl"], res["ppl"], res["ppl_float"]
        print(f"  {row['method']}: KL {res['kl']:.4f}, ppl {res['ppl']:.3f} (float {res['ppl_float']:.3f}) on "
              f"{held.shape[0]} x 512 held-out tokens", flush=True)


SCENARIOS: dict[str, Callable[[Ctx], None]] = {
    "8b-rtn": sc_8b_rtn, "8b-optrtn": sc_8b_optrtn, "1b-signround": sc_1b_signround, "1b-rtn": sc_1b_rtn,
    "1b-optrtn": sc_1b_optrtn, "smollm2-vs-autoround": sc_smollm2_vs_autoround, "dp": sc_dp,
    "ci-1layer-rtn": sc_ci_baseline, "ci-rtn": sc_ci_rtn, "ci-optrtn": sc_ci_optrtn, "ci-signround": sc_ci_signround,
}
DEFAULT = ["8b-rtn", "8b-optrtn", "1b-signround", "1b-rtn", "1b-optrtn", "smollm2-vs-autoround", "dp"]


# ----------------------------------------------------------------------------------------------- report
def machine_info() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = 0
    try:
        mem = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() if shutil.which("uptime") else ""
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "ram_gib": round(mem / GiB, 1),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "signround_commit": commit, "uptime": uptime}


def table(rows: list[dict]) -> str:
    lines = ["| scenario | model | method | calibration | wall s | peak RSS GiB | tree peak GiB | goal | met? |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        if r["rc"] != 0:
            met = f"failed (exit {r['rc']})"
        lines.append(f"| {r['scenario']} | {r['model']} | {r['method']} | {r['calibration']} | {r['wall_s']:.1f} | "
                     f"{r['peak_rss_bytes'] / GiB:.2f} | {r['tree_peak_bytes'] / GiB:.2f} | {r['goal']} | {met} |")
    notes = []
    for r in rows:
        if "check" in r:
            c = r["check"]
            ok = "error" not in c and all(v == 0.0 for v in c.values())
            notes.append(f"- {r['scenario']}: RTN read-back check {'passed' if ok else 'FAILED'} "
                         f"(max |dequantized - RTN(source)| per layer: {c})")
        if "kl" in r:
            notes.append(f"- {r['scenario']} / {r['method']}: KL vs float {r['kl']:.4f}, ppl {r['ppl']:.3f} "
                         f"(float {r['ppl_float']:.3f})")
        notes.append(f"- {r['scenario']} / {r['method']}: load average {r['load_before']} -> {r['load_after']}; "
                     f"user {r['user_s']:.0f} s, sys {r['sys_s']:.0f} s; `{r['cmd']}`"
                     + (f" with {r['env']}" if r['env'] else ""))
    return "\n".join(lines + [""] + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help=f"scenarios [{' '.join(DEFAULT)}]")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--root", default=None, help=f"where the synthetic checkpoints are kept [{synthetic.default_root()}]")
    ap.add_argument("--workdir", default=None, help="outputs and logs (kept with --keep) [a temporary folder]")
    ap.add_argument("--keep", action="store_true", help="keep the quantized outputs and logs")
    ap.add_argument("--iters", type=int, default=None,
                    help="SignRound iterations for every SignRound row (default: each scenario's own; "
                         "peak RSS does not depend on it, time does)")
    ap.add_argument("--kl-windows", type=int, default=16, help="held-out windows of 512 tokens for the dp KL")
    ap.add_argument("--timeout", type=float, default=None, help="kill a child after this many seconds")
    ap.add_argument("--json", default=None, help="result file [benchmarks/results/scale-<UTC date>.json]")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        CHILDREN[args.child[0]](*args.child[1:])
        return
    if args.list:
        for name, fn in SCENARIOS.items():
            print(f"{name:22s} {'(default) ' if name in DEFAULT else ''}{(fn.__doc__ or '').strip()}")
        return
    names = args.only or DEFAULT
    work = Path(args.workdir or tempfile.mkdtemp(prefix="signround-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(root=Path(args.root) if args.root else synthetic.default_root(), work=work, iters=args.iters,
              kl_windows=args.kl_windows, timeout=args.timeout)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB, load {loadavg()}, commit "
          f"{info['signround_commit'][:10]}", flush=True)
    try:
        for name in names:
            SCENARIOS[name](ctx)
    finally:
        info["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        text = table(ctx.rows)
        print("\n" + text)
        path = Path(args.json or HERE / "results" / f"scale-{time.strftime('%Y-%m-%d', time.gmtime())}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "machine": info, "scenarios": names, "iters_override": args.iters,
                                    "rows": ctx.rows, "table": text}, indent=2) + "\n")
        print(f"\nwrote {path}")
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"outputs and logs kept in {work}")


if __name__ == "__main__":
    main()
