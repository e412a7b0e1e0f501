"""Build the calibration batch: resolve sources, tokenise, mix them by ``num=`` and shuffle with a seed.

Mixing follows AutoRound (reference §7): sources with ``num=`` get exactly that many samples, the others
share the remainder evenly (smallest source first, so a small source's shortfall goes to the larger ones).
With no dataset, the hub default is used only when the hub answers; otherwise the bundled corpus.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .bundled import BUNDLED_DESCRIPTION, bundled_documents
from .encode import TokenRow, concat_rows, keep_full_rows, render_chat, special_prefix, to_rows
from .files import LOCAL_SUFFIXES, read_local_file
from .hub import hub_reachable, load_hub_texts
from .memory import describe_items, in_memory_items
from .spec import BUNDLED_NAME, DatasetSpec, parse_dataset_spec

__all__ = ["CalibrationData", "get_calibration_data", "check_dataset", "allocate_samples", "DEFAULT_HUB_DATASET"]

logger = logging.getLogger(__name__)

DEFAULT_HUB_DATASET = "NeelNanda/pile-10k"


@dataclass(frozen=True)
class CalibrationData:
    """Calibration token rows.

    - ``input_ids``: (n, seqlen) int64, every row exactly ``seqlen`` tokens;
    - ``attention_mask``: (n, seqlen) int64, 1 = valid, 0 = pad; None when every token is valid;
    - ``source``: what was used, for the caller to log.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    source: str

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.dtype != torch.int64:
            raise ValueError(f"input_ids must be (n, seqlen) int64, got {tuple(self.input_ids.shape)} {self.input_ids.dtype}")
        mask = self.attention_mask
        if mask is not None and (mask.shape != self.input_ids.shape or mask.dtype != torch.int64):
            raise ValueError(
                f"attention_mask must be int64 of shape {tuple(self.input_ids.shape)}, got {tuple(mask.shape)} {mask.dtype}"
            )

    @property
    def nsamples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seqlen(self) -> int:
        return self.input_ids.shape[1]


@dataclass(frozen=True)
class _Source:
    spec: DatasetSpec
    items: list
    label: str
    default_concat: bool


def allocate_samples(available: list[int], requested: list[int | None], nsamples: int) -> list[int]:
    """How many samples to take from each source; ``requested[i]`` is its ``num=`` or None."""
    fixed = sum(r for r in requested if r is not None)
    if fixed > nsamples:
        raise ValueError(
            f"the num= values of the dataset spec add up to {fixed}, more than nsamples={nsamples}; "
            "lower num= or raise nsamples"
        )
    take = [min(r, a) if r is not None else 0 for a, r in zip(available, requested)]
    remaining = nsamples - sum(take)
    free = sorted((i for i, r in enumerate(requested) if r is None), key=lambda i: available[i])
    for k, i in enumerate(free):
        take[i] = min(available[i], remaining // (len(free) - k))
        remaining -= take[i]
    return take


def _looks_local(name: str) -> bool:
    path = Path(name).expanduser()
    return (
        path.suffix.lower() in LOCAL_SUFFIXES
        or path.exists()
        or name.startswith(("/", "./", "../", "~"))
        or name.count("/") > 1  # hub ids are "name" or "owner/name"
    )


def check_dataset(dataset) -> None:
    """Fail fast on a spec string that does not parse or names a local file that does not exist."""
    if not isinstance(dataset, str):
        return
    for spec in parse_dataset_spec(dataset):
        if spec.name != BUNDLED_NAME and _looks_local(spec.name) and not Path(spec.name).expanduser().is_file():
            raise FileNotFoundError(f"calibration file not found: {spec.name}")


def _spec_source(spec: DatasetSpec) -> _Source:
    if spec.name == BUNDLED_NAME:
        return _Source(spec, bundled_documents(), f"{BUNDLED_NAME} ({BUNDLED_DESCRIPTION})", True)
    if _looks_local(spec.name):
        if spec.split is not None:
            logger.warning("%s: split=%s ignored, local files have no splits", spec.name, "+".join(spec.split))
        path = Path(spec.name).expanduser()
        return _Source(spec, read_local_file(path), str(path), False)
    return _Source(spec, load_hub_texts(spec.name, spec.split or ("train",)), f"hub dataset {spec.name}", False)


def _default_source() -> _Source:
    ok, why = hub_reachable()
    if ok:
        try:
            source = _spec_source(DatasetSpec(DEFAULT_HUB_DATASET))
            logger.info("no calibration dataset given; using %s from the Hugging Face hub", DEFAULT_HUB_DATASET)
            return source
        except Exception as e:  # the default must not fail where the bundled corpus would do
            logger.warning("could not load %s from the hub (%s); using %s", DEFAULT_HUB_DATASET, e, BUNDLED_NAME)
    else:
        logger.info("no calibration dataset given and the hub is not reachable (%s); using %s", why, BUNDLED_NAME)
    return _spec_source(DatasetSpec(BUNDLED_NAME))


def _resolve(dataset, concat: bool | None) -> list[_Source]:
    if (dataset is None or isinstance(dataset, (str, os.PathLike))) and concat is not None:
        raise ValueError("concat= applies to in-memory datasets; in a spec string write ':concat=True' after the name")
    if dataset is None:
        return [_default_source()]
    if isinstance(dataset, os.PathLike):
        dataset = os.fspath(dataset)
    if isinstance(dataset, str):
        return [_spec_source(spec) for spec in parse_dataset_spec(dataset)]
    items = in_memory_items(dataset)
    label = describe_items(items)
    return [_Source(DatasetSpec(label, concat=concat), items, label, False)]


def _source_rows(tokenizer, source: _Source, seqlen: int) -> list[TokenRow]:
    spec, items = source.spec, source.items
    if spec.apply_chat_template:
        texts = [i for i in items if isinstance(i, str)]
        rendered = iter(render_chat(tokenizer, texts, spec.system_prompt, source.label))
        items = [next(rendered) if isinstance(i, str) else i for i in items]
    has_text = any(isinstance(i, str) for i in items)
    concat = source.default_concat if spec.concat is None else spec.concat
    if not concat:
        rows = to_rows(tokenizer, items, add_special_tokens=not spec.apply_chat_template, max_len=seqlen, eos=None)
        return keep_full_rows(rows, seqlen, source.label)
    eos = getattr(tokenizer, "eos_token_id", None) if has_text else None
    rows = to_rows(tokenizer, items, add_special_tokens=False, max_len=None, eos=eos)
    prefix = special_prefix(tokenizer) if has_text and not spec.apply_chat_template else []
    chunks = concat_rows(rows, seqlen, prefix)
    if not chunks:
        total = sum(len(r) for r in rows)
        raise ValueError(f"{source.label}: all its samples together have {total} tokens, fewer than seqlen={seqlen}")
    return chunks


def _check_args(nsamples: int, seqlen: int, seed: int) -> None:
    for name, value, low in (("nsamples", nsamples, 1), ("seqlen", seqlen, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def get_calibration_data(
    tokenizer, dataset=None, nsamples: int = 128, seqlen: int = 2048, seed: int = 42, *, concat: bool | None = None
) -> CalibrationData:
    """Calibration rows of exactly ``seqlen`` tokens from ``dataset`` (see the package docstring).

    ``concat`` applies to in-memory datasets only; spec strings carry their own ``:concat=`` option.
    Fewer than ``nsamples`` rows are returned, with a warning, when the sources cannot supply more.
    """
    _check_args(nsamples, seqlen, seed)
    sources = _resolve(dataset, concat)
    pools = [_source_rows(tokenizer, s, seqlen) for s in sources]
    take = allocate_samples([len(p) for p in pools], [s.spec.num for s in sources], nsamples)
    rng = random.Random(seed)
    picked: list[TokenRow] = []
    for source, pool, k in zip(sources, pools, take):
        if source.spec.num is not None and k < source.spec.num:
            logger.warning("%s: num=%d asked but only %d samples are available", source.label, source.spec.num, k)
        order = list(range(len(pool)))
        rng.shuffle(order)
        picked.extend(pool[i] for i in order[:k])
    rng.shuffle(picked)
    if len(picked) < nsamples:
        logger.warning(
            "only %d calibration samples of %d tokens are available, fewer than nsamples=%d; continuing with %d "
            "(add data, lower seqlen, or set concat=True if it is off)", len(picked), seqlen, nsamples, len(picked),
        )
    input_ids = torch.stack([r.ids for r in picked])  # (n, seqlen)
    mask = None
    if any(r.mask is not None for r in picked):
        mask = torch.stack([torch.ones_like(r.ids) if r.mask is None else r.mask for r in picked])  # (n, seqlen)
    description = "; ".join(f"{s.label}: {k} samples" for s, k in zip(sources, take) if k) + f" (seqlen {seqlen})"
    logger.info("calibration data: %s", description)
    return CalibrationData(input_ids, mask, description)
