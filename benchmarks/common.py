"""Shared set-up for the benchmarks: the real SmolLM2-135M model, held-out windows, KL evaluation."""

from __future__ import annotations

import copy
import platform
import subprocess
import time

import torch

from signround.calib import heldout_text
from signround.eval.metrics import evaluate, windows
from signround.model.loading import load_model
from signround.testing import smollm2_hf_dir

__all__ = ["load_smollm2", "heldout_rows", "kl_vs_float", "machine_line", "matmul_gflops", "Timer"]


def load_smollm2():
    return load_model(str(smollm2_hf_dir()), dtype="float32")


def heldout_rows(tokenizer, seqlen: int = 512, max_windows: int = 16) -> torch.Tensor:
    return windows(tokenizer(heldout_text(), return_tensors="pt").input_ids, seqlen, max_windows)


def kl_vs_float(model, float_model, rows) -> dict:
    return evaluate(model, rows, float_model).as_dict()


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = torch.get_num_threads()
    return f"{cpu}, {cores} threads, torch {torch.__version__}, {platform.python_version()}, {time.strftime('%Y-%m-%d')}"


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10) -> float:
    """This machine's measured matmul throughput (n x n x n), the yardstick for tuning FLOP/s."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def clone(model):
    return copy.deepcopy(model)
