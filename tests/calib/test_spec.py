"""The dataset spec grammar: AutoRound-compatible strings, and clear errors naming the bad part."""

from __future__ import annotations

import pytest

from signround.calib import DatasetSpec, parse_dataset_spec


def test_single_name_gets_defaults():
    assert parse_dataset_spec("NeelNanda/pile-10k") == [DatasetSpec("NeelNanda/pile-10k")]
    (spec,) = parse_dataset_spec("data/x.jsonl")
    assert (spec.num, spec.split, spec.concat, spec.apply_chat_template, spec.system_prompt) == (
        None, None, None, False, None,
    )


def test_full_grammar_with_spaces():
    specs = parse_dataset_spec(
        " a.jsonl : num=3 : concat=True , signround:bundled:concat=false,"
        " org/set:split=train+validation:num=7:system_prompt=Be brief and kind, b.txt:apply_chat_template"
    )
    assert specs == [
        DatasetSpec("a.jsonl", num=3, concat=True),
        DatasetSpec("signround:bundled", concat=False),
        DatasetSpec("org/set", num=7, split=("train", "validation"), apply_chat_template=True,
                    system_prompt="Be brief and kind"),
        DatasetSpec("b.txt", apply_chat_template=True),
    ]


def test_explicit_booleans():
    (spec,) = parse_dataset_spec("a.json:apply_chat_template=False:concat=1")
    assert spec.apply_chat_template is False and spec.concat is True


@pytest.mark.parametrize(
    "spec, words",
    [
        ("a.jsonl:nums=3", ["unknown option 'nums'", "a.jsonl:nums=3", "num", "split", "concat", "apply_chat_template", "system_prompt"]),
        ("a.jsonl:num=three", ["num='three'", "not an integer"]),
        ("a.jsonl:num=0", ["num must be an integer >= 1", "a.jsonl"]),
        ("a.jsonl:concat=maybe", ["concat='maybe'", "True or False"]),
        ("a.jsonl:num", ["'num'", "needs a value"]),
        ("a.jsonl:split=", ["'split'", "empty value"]),
        ("a.jsonl:split=train++test", ["empty name between '+'"]),
        ("a.jsonl:num=1:num=2", ["given twice"]),
        ("a.jsonl,,b.jsonl", ["empty entry"]),
        ("a.jsonl,", ["empty entry"]),
        (":num=3", ["no dataset name"]),
        ("num=3", ["no dataset name"]),
        ("a.jsonl::num=3", ["empty option"]),
        ("signround:wiki", ["unknown built-in corpus 'signround:wiki'", "signround:bundled"]),
        ("signround", ["names no built-in corpus"]),
        ("a.jsonl:apply_chat_template=False:system_prompt=hi", ["system_prompt", "apply_chat_template=False"]),
        ("   ", ["empty"]),
    ],
)
def test_bad_specs_name_the_culprit(spec, words):
    with pytest.raises(ValueError) as err:
        parse_dataset_spec(spec)
    for word in words:
        assert word in str(err.value)


def test_spec_must_be_a_string():
    with pytest.raises(TypeError, match="must be a string"):
        parse_dataset_spec(["a.jsonl"])


def test_dataclass_validates_directly():
    with pytest.raises(ValueError, match="system_prompt is set but apply_chat_template=False"):
        DatasetSpec("a.jsonl", system_prompt="x")
    with pytest.raises(ValueError, match="num must be an integer >= 1"):
        DatasetSpec("a.jsonl", num=-2)
