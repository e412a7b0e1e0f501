"""The calibration dataset spec grammar, compatible with AutoRound's ``--dataset`` strings.

``,`` separates datasets, ``:`` separates a dataset's options, ``=`` assigns, ``+`` joins values::

    NeelNanda/pile-10k:num=64,data/chat.jsonl:apply_chat_template:system_prompt=Be brief,signround:bundled

Parsing is pure (no file or network access) so a bad spec fails before any work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["DatasetSpec", "parse_dataset_spec", "SPEC_OPTIONS", "BUILTIN_PREFIX", "BUNDLED_NAME", "BUILTIN_CORPORA"]

logger = logging.getLogger(__name__)

# Names under this prefix are corpora shipped with signround ("signround:bundled"); the prefix contains
# the option separator, so the parser joins it back to the name that follows.
BUILTIN_PREFIX = "signround"
BUNDLED_NAME = f"{BUILTIN_PREFIX}:bundled"
BUILTIN_CORPORA = (BUNDLED_NAME,)

SPEC_OPTIONS: dict[str, str] = {
    "num": "take N samples from this source (an integer >= 1)",
    "split": "dataset split(s) to read, joined with '+' (hub datasets only; default train)",
    "concat": "True|False: join all texts (EOS between documents) and cut them into seqlen chunks",
    "apply_chat_template": "[True|False]: render each text as a user message with the tokenizer's chat template",
    "system_prompt": "system message for the chat template (implies apply_chat_template)",
}

_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_FLAG_OPTIONS = ("concat", "apply_chat_template")  # may be given without "=value", meaning True


@dataclass(frozen=True)
class DatasetSpec:
    """One calibration source and its options, as parsed from a spec string.

    ``concat=None`` means "the source's default" (True for the bundled corpus, False otherwise);
    ``split=None`` means "train" for hub datasets (local files have no splits).
    """

    name: str
    num: int | None = None
    split: tuple[str, ...] | None = None
    concat: bool | None = None
    apply_chat_template: bool = False
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"dataset name must be a non-empty string, got {self.name!r}")
        if self.num is not None and (isinstance(self.num, bool) or not isinstance(self.num, int) or self.num < 1):
            raise ValueError(f"num must be an integer >= 1 for dataset {self.name!r}, got {self.num!r}")
        if self.split is not None and (not self.split or not all(isinstance(s, str) and s for s in self.split)):
            raise ValueError(f"split must be one or more non-empty names for dataset {self.name!r}, got {self.split!r}")
        if self.system_prompt is not None and not self.apply_chat_template:
            raise ValueError(
                f"system_prompt is set but apply_chat_template=False for dataset {self.name!r}; "
                "a system prompt only exists inside a chat template"
            )


def _valid_options_hint() -> str:
    return "valid options: " + "; ".join(f"{k} ({v})" for k, v in SPEC_OPTIONS.items())


def _parse_bool(value: str, key: str, part: str) -> bool:
    try:
        return _BOOL_WORDS[value.lower()]
    except KeyError:
        raise ValueError(f"option {key}={value!r} in dataset spec {part!r} is not a boolean; use True or False") from None


def _parse_options(name: str, options: list[str], part: str) -> DatasetSpec:
    values: dict[str, object] = {}
    for raw in options:
        key, has_value, value = (s.strip() for s in raw.partition("="))
        if not key:
            raise ValueError(f"empty option {raw!r} in dataset spec {part!r}; {_valid_options_hint()}")
        if key not in SPEC_OPTIONS:
            raise ValueError(f"unknown option {key!r} in dataset spec {part!r}; {_valid_options_hint()}")
        if key in values:
            raise ValueError(f"option {key!r} given twice in dataset spec {part!r}")
        if not has_value and key not in _FLAG_OPTIONS:
            raise ValueError(f"option {key!r} in dataset spec {part!r} needs a value ({key}=...)")
        if has_value and not value:
            raise ValueError(f"option {key!r} in dataset spec {part!r} has an empty value")
        if key == "num":
            try:
                values[key] = int(value)
            except ValueError:
                raise ValueError(f"num={value!r} in dataset spec {part!r} is not an integer") from None
        elif key == "split":
            splits = tuple(s.strip() for s in value.split("+"))
            if not all(splits):
                raise ValueError(f"split={value!r} in dataset spec {part!r} has an empty name between '+'")
            values[key] = splits
        elif key in _FLAG_OPTIONS:
            values[key] = _parse_bool(value, key, part) if has_value else True
        else:  # system_prompt
            values[key] = value
    if "system_prompt" in values:
        if values.get("apply_chat_template") is False:
            raise ValueError(f"dataset spec {part!r} sets system_prompt but apply_chat_template=False")
        values["apply_chat_template"] = True
    return DatasetSpec(name=name, **values)  # type: ignore[arg-type]


def parse_dataset_spec(spec: str) -> list[DatasetSpec]:
    """Parse a dataset spec string into one :class:`DatasetSpec` per source (order kept)."""
    if not isinstance(spec, str):
        raise TypeError(f"dataset spec must be a string, got {type(spec).__name__}")
    if not spec.strip():
        raise ValueError("dataset spec is empty; give a file path, a hub dataset id or 'signround:bundled'")
    specs = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"dataset spec {spec!r} has an empty entry between ','")
        fields = [f.strip() for f in part.split(":")]
        if fields[0] == BUILTIN_PREFIX:
            if len(fields) < 2 or not fields[1]:
                raise ValueError(f"dataset spec {part!r} names no built-in corpus after '{BUILTIN_PREFIX}:'")
            fields = [f"{BUILTIN_PREFIX}:{fields[1]}", *fields[2:]]
            if fields[0] not in BUILTIN_CORPORA:
                raise ValueError(f"unknown built-in corpus {fields[0]!r} in dataset spec {part!r}; available: {BUILTIN_CORPORA}")
        if not fields[0] or "=" in fields[0]:
            raise ValueError(f"dataset spec {part!r} has no dataset name before its options; put the name first")
        specs.append(_parse_options(fields[0], fields[1:], part))
    return specs
