"""Loaders that read a quantized checkpoint directory and return logits: ours and real third-party ones.

Used by ``signround verify`` and the interop tests. Each row says which ``quant_method``s it reads,
the modules it needs, and ``skip`` (a known limit of that loader, as a sentence, or None); a loader
whose modules are missing is reported as skipped with the ``pip install`` that would enable it.
More rows can be added with ``register_loader``; GGUF files go to ``verify_gguf`` instead.

| loader | reads | needs | known limits (skipped, with the reason) |
|---|---|---|---|
| signround | auto-round, gptq, awq, compressed-tensors, float (fake format) | - | - |
| transformers | float (fake format) | - | - |
| transformers+auto-round | auto-round; gptq (sym) | auto_round | asym GPTQ fails in auto-round 0.16.1 (TypeError in pad_bits) |
| transformers+gptqmodel | gptq, awq | optimum + gptqmodel (gptq), gptqmodel (awq) | optimum 2.3 ignores ``dynamic`` and ``lm_head`` |
| gptqmodel | gptq, awq | gptqmodel | needs a tokenizer in the directory; refuses asym GPTQ v1 not written by GPTQModel |
| transformers+compressed-tensors | compressed-tensors | compressed_tensors | runs in bfloat16 (its MX/NVFP4 scales decode to bfloat16 only); its CPU emulation of MX/NVFP4/dynamic-int8 inputs rounds scales by other rules |
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["Loader", "LOADERS", "register_loader", "checkpoint_method", "LogitsFn", "describe"]

logger = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # (B, T) token ids -> (B, T, V) float32 logits


def _no_limit(folder: Path, qc: dict) -> str | None:
    return None


@dataclass(frozen=True)
class Loader:
    name: str
    requires: dict[str, tuple[str, ...]]  # quant_method it reads ("float": no quantization_config) -> modules needed
    pip: str  # what to install for it
    load: Callable[[Path], LogitsFn]
    skip: Callable[[Path, dict], "str | None"] = _no_limit  # a known limit of the loader for this checkpoint, or None

    @property
    def methods(self) -> frozenset[str]:
        return frozenset(self.requires)

    def missing(self, method: str) -> list[str]:
        """Modules this loader needs for ``method`` that are not installed."""
        return [m for m in self.requires.get(method, ()) if importlib.util.find_spec(m) is None]


LOADERS: dict[str, Loader] = {}


def register_loader(loader: Loader) -> Loader:
    if loader.name in LOADERS:
        raise RuntimeError(f"loader {loader.name!r} is already registered")
    LOADERS[loader.name] = loader
    return loader


def checkpoint_method(folder: Path) -> tuple[str, dict[str, Any]]:
    """(quant_method, quantization_config) of a checkpoint directory; ("float", {}) without a quantization_config.

    GGUF files do not come here: ``signround.verify`` hands them to ``verify_gguf`` (llama.cpp, gguf-py).
    """
    from .checkpoint import read_config

    qc = read_config(folder).get("quantization_config") or {}
    if not qc:
        return "float", {}  # a float (fake-format) checkpoint: load_quantized reads it as a plain model
    return str(qc.get("quant_method", "")).lower(), qc


def _no_grad_logits(model: torch.nn.Module) -> LogitsFn:
    @torch.no_grad()
    def run(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, use_cache=False).logits.float()

    return run


def _load_signround(folder: Path) -> LogitsFn:
    from .load import load_quantized

    return _no_grad_logits(load_quantized(folder))


def _load_hf(folder: Path, **kwargs: Any) -> LogitsFn:
    from transformers import AutoModelForCausalLM

    return _no_grad_logits(AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", **kwargs).eval())


def _load_hf_auto_round(folder: Path) -> LogitsFn:
    from transformers import AutoRoundConfig

    method, _ = checkpoint_method(folder)
    if method == "gptq":  # auto-round converts a GPTQ checkpoint when given its config
        return _load_hf(folder, quantization_config=AutoRoundConfig(backend="torch"))  # auto-round's backend name
    return _load_hf(folder)


def _load_hf_compressed_tensors(folder: Path) -> LogitsFn:
    """bfloat16: compressed-tensors decodes E8M0 and NVFP4 scales to bfloat16 and fails in a float32 model."""
    return _load_hf(folder, dtype=torch.bfloat16)


def _load_gptqmodel(folder: Path) -> LogitsFn:
    from gptqmodel import GPTQModel

    return _no_grad_logits(GPTQModel.load(str(folder), device="cpu").model.eval())


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()


def _skip_auto_round(folder: Path, qc: dict) -> str | None:
    if qc.get("quant_method") == "gptq" and not qc.get("sym", True):
        return "auto-round 0.16.1 fails on asym GPTQ checkpoints (TypeError in pad_bits)"
    if qc.get("quant_method") == "gptq" and qc.get("checkpoint_format", "gptq") != "gptq":
        return "auto-round converts only GPTQ v1 checkpoints"
    return None


def _skip_hf_gptqmodel(folder: Path, qc: dict) -> str | None:
    if qc.get("quant_method") == "gptq" and (qc.get("dynamic") or qc.get("lm_head")):
        return "optimum 2.3 gives every in-block layer the global scheme (ignores dynamic and lm_head); see gptqmodel"
    return None


def _skip_gptqmodel(folder: Path, qc: dict) -> str | None:
    if not _has_tokenizer(folder):
        return "GPTQModel.load needs a tokenizer in the checkpoint directory"
    if qc.get("quant_method") == "gptq" and not qc.get("sym", True):
        return "GPTQModel refuses asym GPTQ v1 checkpoints it did not write itself"
    return None


def _skip_compressed_tensors(folder: Path, qc: dict) -> str | None:
    """Inputs whose CPU emulation differs by design (measured in tests/interop/test_compressed_tensors.py)."""
    for name, group in (qc.get("config_groups") or {}).items():
        act = group.get("input_activations") or {}
        if act.get("strategy") in ("group", "tensor_group") or (act.get("type") == "int" and act.get("dynamic")):
            return (f"compressed-tensors 0.20.1 emulates {name}'s {act.get('strategy')}-wise inputs with other scale "
                    "rounding (MX: nearest power of two, not the OCP floor; int8: max/127.5) and in bfloat16, so its "
                    "logits differ by design (rel 0.04-0.17); a real engine (vLLM) is the check for this file")
    return None


_AR = ("auto_round",)
register_loader(Loader("signround", {m: () for m in ("auto-round", "intel/auto-round", "gptq", "awq",
                                                      "compressed-tensors", "float")},
                       "signround", _load_signround))
# A fake-format checkpoint is a plain float model: transformers' own from_pretrained is the loader users run.
register_loader(Loader("transformers", {"float": ()}, "transformers", _load_hf))
register_loader(Loader("transformers+auto-round", {"auto-round": _AR, "intel/auto-round": _AR, "gptq": _AR},
                       "auto-round==0.16.1", _load_hf_auto_round, _skip_auto_round))
register_loader(Loader("transformers+gptqmodel", {"gptq": ("optimum", "gptqmodel"), "awq": ("gptqmodel",)},
                       "optimum==2.3.0 gptqmodel==7.6.0", _load_hf, _skip_hf_gptqmodel))
register_loader(Loader("gptqmodel", {"gptq": ("gptqmodel",), "awq": ("gptqmodel",)}, "gptqmodel==7.6.0",
                       _load_gptqmodel, _skip_gptqmodel))
register_loader(Loader("transformers+compressed-tensors", {"compressed-tensors": ("compressed_tensors",)},
                       "compressed-tensors==0.20.1", _load_hf_compressed_tensors, _skip_compressed_tensors))


def describe() -> str:
    """One line per loader: its name, what it reads and what it needs."""
    lines = []
    for loader in LOADERS.values():
        needs = sorted({m for mods in loader.requires.values() for m in mods})
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        state = "ready" if not missing else f"missing {', '.join(missing)} (pip install {loader.pip})"
        lines.append(f"{loader.name:24s} reads {', '.join(sorted(loader.methods)):38s} {state}")
    return "\n".join(lines)
