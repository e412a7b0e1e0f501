"""Choose the matmul precision of the tuning loop from what the hardware is, never from a timing.

On CPUs with AMX (Sapphire Rapids and later: the ``amx_bf16`` CPU flag) bfloat16 matmuls run several
times faster than float32 (measured: 0.140 s vs 0.249 s per SignRound iteration on one SmolLM2 block);
on CPUs without it bfloat16 is slower (AutoRound's bf16 default is ~1.7x slower than float32 there,
reference real-loaders §2e). The choice is a pure function of the device and the CPU flags, so the same
command on the same machine always gives the same bytes; the reason is recorded in ``signround.json``.
Only the tuning loop's matmuls change: reference passes, fake quantization and the loss stay float32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import BadInputError

__all__ = ["resolve_tune_dtype", "cpu_flags", "DTYPE_NAMES"]

DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float16": torch.float16, "fp16": torch.float16}


def cpu_flags(cpuinfo: "str | Path" = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def resolve_tune_dtype(tune_dtype: "str | torch.dtype", device: str,
                       flags: frozenset[str] | None = None) -> tuple[torch.dtype, str]:
    """(dtype, why): ``"auto"`` is bfloat16 on CUDA with bf16 support and on CPUs with AMX, else float32."""
    if isinstance(tune_dtype, torch.dtype):
        return tune_dtype, "given"
    if tune_dtype in DTYPE_NAMES:
        return DTYPE_NAMES[tune_dtype], "given"
    if tune_dtype != "auto":
        raise BadInputError(f"unknown tune_dtype {tune_dtype!r}; use auto, {', '.join(DTYPE_NAMES)}")
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: the CUDA device supports bfloat16"
        return torch.float32, "auto: the CUDA device has no bfloat16"
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return torch.bfloat16, "auto: CPU flag amx_bf16 (AMX bfloat16 matmuls)"
    return torch.float32, "auto: no amx_bf16 CPU flag (bfloat16 matmuls would be slower than float32)"
