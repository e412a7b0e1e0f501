"""Small helpers shared by tests: quantize a tiny model in memory and export it."""

from __future__ import annotations

from pathlib import Path

import torch

from signround.formats import Format
from signround.export.registry import ExportInput, export_model
from signround.model.arch import arch_facts
from signround.plan import build_plan
from signround.schemes import resolve_scheme
from signround.method import Start
from signround.tune.driver import RuntimeOptions, quantize_model
from signround.tune.signround import SignRoundConfig


def quantize_tiny(model, ids, scheme="W4A16", iters=4, formats=(Format.AUTO_ROUND,), optimize_rtn=True, **plan_kw):
    arch = arch_facts(model)
    scheme = resolve_scheme(scheme) if isinstance(scheme, str) else resolve_scheme("W4A16", **scheme)
    plan = build_plan(model, arch, scheme, formats=list(formats), **plan_kw)
    result = quantize_model(model, arch, plan, ids, None, SignRoundConfig(iters=iters, batch_size=4),
                            start=Start.SEARCH if optimize_rtn else Start.MINMAX, runtime=RuntimeOptions(show_progress=False))
    return plan, result


def export_tiny(model, plan, result, fmt: Format, folder: Path) -> Path:
    return export_model(ExportInput(model, None, plan, result.weights, source="tiny"), fmt, folder)


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=ids).logits.float()
