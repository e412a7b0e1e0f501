"""Normalise in-memory calibration data (texts, token-id tensors and lists, tokenizer outputs) into items.

Token ids given by the user are used as they are: no tokens added, and a given attention mask kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from .encode import TokenRow

__all__ = ["in_memory_items", "describe_items"]

logger = logging.getLogger(__name__)


def _as_int_tensor(value, what: str) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{what} must hold integer token ids, got dtype {tensor.dtype}")
    return tensor.to(torch.int64).cpu()


def _tensor_rows(ids, mask, what: str) -> list[TokenRow]:
    ids = _as_int_tensor(ids, what)
    mask = None if mask is None else _as_int_tensor(mask, f"{what} attention_mask")
    if ids.dim() == 1:
        ids, mask = ids.unsqueeze(0), None if mask is None else mask.reshape(1, -1)  # (1, L)
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"{what} must be 1-D (one row) or 2-D (rows, tokens) and non-empty, got shape {tuple(ids.shape)}")
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(f"{what}: attention_mask shape {tuple(mask.shape)} != input_ids shape {tuple(ids.shape)}")
    rows = []
    for r in range(ids.shape[0]):
        row_mask = None if mask is None or bool((mask[r] != 0).all()) else (mask[r] != 0).to(torch.int64)
        rows.append(TokenRow(ids[r].clone(), row_mask))
    return rows


def _is_token_list(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _element_items(element, index: int) -> list:
    what = f"dataset element {index}"
    if isinstance(element, str):
        return [element]
    if isinstance(element, torch.Tensor):
        return _tensor_rows(element, None, what)
    if _is_token_list(element):
        return _tensor_rows(list(element), None, what)
    if isinstance(element, Mapping) and "input_ids" in element:
        return _tensor_rows(element["input_ids"], element.get("attention_mask"), what)
    raise TypeError(
        f"{what} has unsupported type {type(element).__name__}; expected a string, a token-id tensor, "
        "a list of ints, or a dict with 'input_ids' (and optional 'attention_mask')"
    )


def in_memory_items(dataset) -> list:
    """A tensor, a tokenizer output (mapping with ``input_ids``) or a list of texts/token rows -> items."""
    if isinstance(dataset, torch.Tensor):
        return _tensor_rows(dataset, None, "dataset tensor")
    if isinstance(dataset, Mapping):
        if "input_ids" not in dataset:
            raise TypeError(f"a dict dataset needs an 'input_ids' entry, got keys {sorted(dataset)}")
        return _tensor_rows(dataset["input_ids"], dataset.get("attention_mask"), "dataset['input_ids']")
    if not isinstance(dataset, Sequence) or isinstance(dataset, (str, bytes)):
        raise TypeError(
            f"dataset must be None, a spec string, a list of texts or token ids, or a tensor; got {type(dataset).__name__}"
        )
    if len(dataset) == 0:
        raise ValueError("dataset is an empty list; give texts, token ids, or a spec string such as 'signround:bundled'")
    if _is_token_list(dataset):
        return _tensor_rows(list(dataset), None, "dataset")
    return [item for i, element in enumerate(dataset) for item in _element_items(element, i)]


def describe_items(items: list) -> str:
    texts = sum(isinstance(i, str) for i in items)
    parts = [f"{texts} texts" if texts else "", f"{len(items) - texts} token rows" if len(items) > texts else ""]
    return "in-memory dataset (" + ", ".join(p for p in parts if p) + ")"
