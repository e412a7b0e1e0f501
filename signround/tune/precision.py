"""Choose the matmul precision of the tuning loop by measuring this machine, not by assuming.

On CPUs with AMX (Sapphire Rapids and later) bfloat16 matmuls run several times faster than
float32; on CPUs without it bfloat16 is slower (AutoRound's bf16 default is ~1.7x slower than
float32 there, reference real-loaders §2e). A 1/20 s probe decides. Only the tuning loop's
matmuls change: reference passes, fake quantization and the loss stay float32.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

__all__ = ["resolve_tune_dtype", "bf16_speedup"]

logger = logging.getLogger(__name__)

BF16_MIN_SPEEDUP = 1.5  # use bf16 only where it clearly pays


def _time_matmul(dtype: torch.dtype, n: int, reps: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: kernel selection, packing
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return (time.perf_counter() - t) / reps


@functools.lru_cache(maxsize=None)
def bf16_speedup(n: int = 512, reps: int = 6) -> float:
    """How many times faster a CPU bfloat16 matmul is than a float32 one on this machine."""
    return _time_matmul(torch.float32, n, reps) / _time_matmul(torch.bfloat16, n, reps)


def resolve_tune_dtype(tune_dtype: "str | torch.dtype", device: str) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA with bf16 support, and on a CPU where the probe shows it pays; else float32."""
    if isinstance(tune_dtype, torch.dtype):
        return tune_dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if tune_dtype in names:
        return names[tune_dtype]
    if tune_dtype != "auto":
        raise ValueError(f"unknown tune_dtype {tune_dtype!r}; use auto, {', '.join(names)}")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    speedup = bf16_speedup()
    chosen = torch.bfloat16 if speedup >= BF16_MIN_SPEEDUP else torch.float32
    logger.info("tuning matmuls in %s (bfloat16 measured %.1fx the float32 speed on this CPU)",
                str(chosen).removeprefix("torch."), speedup)
    return chosen
