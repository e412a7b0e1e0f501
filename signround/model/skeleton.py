"""A model without its weights, filled and emptied one submodule at a time from a WeightSource.

``build_skeleton`` creates the real transformers model class with every parameter on the meta device
(no memory) and its buffers real on CPU, because buffers such as rotary ``inv_freq`` are computed from the
config, not stored. The quantizer then ``materialize``s one block, works on it, and ``release``s it, so
only one block's weights are ever resident. Tied parameters (one Parameter object under several names,
such as a tied ``lm_head.weight``) are handled as one: filled once, and the same object set under every
name, so they stay tied as transformers made them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator

import torch

from ..errors import BadInputError
from .weights import WeightSource

__all__ = ["build_skeleton", "check_source_covers", "materialize", "release", "is_materialized"]

MAX_LISTED = 6


def build_skeleton(config, dtype: torch.dtype, trust_remote_code: bool = False) -> torch.nn.Module:
    """The causal LM for ``config`` in ``dtype``: parameters on meta, buffers computed on CPU, eval mode, tied.

    The caller's config is not modified (transformers records the dtype on the config it builds from).
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    # accelerate re-creates each parameter as it moves it to meta, which breaks the ties made in __init__;
    # tie again from the config, as transformers does after loading.
    model.tie_weights()
    return model.eval()


def _tie_groups(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names grouped by Parameter object (a group of several names is a tie), in model order."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return list(groups.values())


def _persistent_buffers(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(full name, buffer) of every buffer saved in a checkpoint (computed, non-persistent ones are not)."""
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for leaf, buf in mod._buffers.items():
            if buf is not None and leaf not in mod._non_persistent_buffers_set:
                yield (f"{mod_name}.{leaf}" if mod_name else leaf), buf


def _may_be_missing(model: torch.nn.Module):
    """Matches the names transformers itself accepts missing from a checkpoint (``_keys_to_ignore_on_load_missing``)."""
    patterns = list(getattr(model, "_keys_to_ignore_on_load_missing", None) or [])
    rx = re.compile("|".join(f"({p})" for p in patterns)) if patterns else None
    return lambda name: rx is not None and rx.search(name) is not None


def _missing_error(source: WeightSource, names: list[str]) -> BadInputError:
    return BadInputError(f"{source.describe()}: the checkpoint has no tensor for {', '.join(names[:MAX_LISTED])}"
                         + (f" ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")
                         + " (truncated or incomplete checkpoint?); it would load with random weights")


def _check_shape(source: WeightSource, name: str, expected: torch.Size) -> None:
    info = source.info(name)
    if info.shape != tuple(expected):
        raise BadInputError(f"{info.file}: tensor {name} has shape {list(info.shape)}, but the model expects "
                            f"{list(expected)} (checkpoint for another config?)")


def check_source_covers(model: torch.nn.Module, source: WeightSource) -> list[str]:
    """Every parameter and persistent buffer is in ``source`` with its shape; returns the source names left unused.

    A tie needs only one of its names. Checked from the headers alone, before any weight is read, so a
    truncated or mismatched checkpoint fails at once instead of after hours of work on earlier blocks.
    """
    available = set(source.names())
    params = dict(model.named_parameters(remove_duplicate=False))
    used: set[str] = set(params)
    missing: list[str] = []
    for group in _tie_groups(model):
        present = [n for n in group if n in available]
        if not present:
            missing.append(group[0])
        for n in present:
            _check_shape(source, n, params[n].shape)
    ignorable = _may_be_missing(model)
    for name, buf in _persistent_buffers(model):
        used.add(name)
        if name in available:
            _check_shape(source, name, buf.shape)
        elif not ignorable(name):
            missing.append(name)
    if missing:
        raise _missing_error(source, missing)
    return [n for n in source.names() if n not in used]


def _in_scope(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


def _check_prefix(model: torch.nn.Module, prefix: str) -> None:
    if not prefix:
        return
    try:
        model.get_submodule(prefix)
    except AttributeError:
        try:
            model.get_parameter(prefix)
        except AttributeError:
            raise ValueError(f"{type(model).__name__} has no submodule or parameter {prefix!r}") from None


def _set_parameter(model: torch.nn.Module, name: str, value: torch.nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    model.get_submodule(owner).register_parameter(leaf, value)


def _scoped_groups(model: torch.nn.Module, prefix: str) -> list[list[str]]:
    """Tie groups with at least one name under ``prefix``, those names first (the preferred ones to read)."""
    out = []
    for group in _tie_groups(model):
        inside = [n for n in group if _in_scope(n, prefix)]
        if inside:
            out.append(inside + [n for n in group if n not in inside])
    return out


def materialize(model: torch.nn.Module, prefix: str, source: WeightSource, mapped: bool = False) -> None:
    """Fill every meta parameter under ``prefix`` ("" = the whole model), and its persistent buffers, from ``source``.

    Stored dtypes differing from the skeleton's are cast to it. A tie gets one new Parameter set under
    all its names, including names outside ``prefix``. Parameters already real are left as they are.
    """
    _check_prefix(model, prefix)
    available = set(source.names())
    for group in _scoped_groups(model, prefix):
        old = model.get_parameter(group[0])
        if not old.is_meta:
            continue
        name = next((n for n in group if n in available), None)
        if name is None:
            raise _missing_error(source, group[:1])
        _check_shape(source, name, old.shape)
        # mapped: a view of the file where the source offers one (pages count only once touched)
        value = source.read_mapped(name) if mapped and hasattr(source, "read_mapped") else source.read(name)
        if value.dtype != old.dtype:
            value = value.to(old.dtype)
        new = torch.nn.Parameter(value, requires_grad=old.requires_grad and value.is_floating_point())
        for n in group:
            _set_parameter(model, n, new)
    for name, buf in list(_persistent_buffers(model)):
        if _in_scope(name, prefix) and name in available:
            _check_shape(source, name, buf.shape)
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner).register_buffer(leaf, source.read(name).to(buf.dtype), persistent=True)


def release(model: torch.nn.Module, prefix: str) -> None:
    """Put every parameter under ``prefix`` (and its tied partners) back on meta, freeing its memory.

    Buffers stay: they are small and, for computed ones, could not be read back from the checkpoint.
    """
    _check_prefix(model, prefix)
    for group in _scoped_groups(model, prefix):
        old = model.get_parameter(group[0])
        if old.is_meta:
            continue
        empty = torch.nn.Parameter(torch.empty(old.shape, dtype=old.dtype, device="meta"),
                                   requires_grad=old.requires_grad)
        for n in group:
            _set_parameter(model, n, empty)


def is_materialized(module: torch.nn.Module) -> bool:
    """True when no parameter or buffer of ``module`` is on the meta device."""
    return not any(t.is_meta for t in (*module.parameters(), *module.buffers()))
