"""Reading local calibration files: every accepted record shape, and the errors for bad files."""

from __future__ import annotations

import json

import pytest

from signround.calib.files import read_local_file


def test_jsonl_record_shapes(write_jsonl):
    path = write_jsonl(
        "mixed.jsonl",
        ["plain string", {"text": "with text", "id": 3}, {"content": "single key"}, {"input_ids": [5, 6, 7]},
         {"input_ids": "ids as text"}, [8, 9]],
    )
    assert read_local_file(path) == ["plain string", "with text", "single key", [5, 6, 7], "ids as text", [8, 9]]


def test_json_list_and_dict_of_values(tmp_path):
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(["one", {"text": "two"}]))
    as_dict = tmp_path / "dict.json"
    as_dict.write_text(json.dumps({"a": "one", "b": {"text": "two"}, "column": ["three", "four"]}))
    assert read_local_file(as_list) == ["one", "two"]
    assert read_local_file(as_dict) == ["one", "two", "three", "four"]


def test_txt_documents_split_on_blank_lines(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("first doc\nline two\n\n  \nsecond doc\n\n\n\nthird\n")
    assert read_local_file(path) == ["first doc\nline two", "second doc", "third"]
    single = tmp_path / "one.txt"
    single.write_text("no\nblank\nlines\n")
    assert read_local_file(single) == ["no\nblank\nlines"]


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_local_file(missing)


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("bad.jsonl", '"ok"\n{not json\n', ["bad.jsonl line 2", "not valid JSON"]),
        ("keys.jsonl", '{"a": "x", "b": "y"}\n', ["keys.jsonl line 1", "['a', 'b']", "'text'"]),
        ("ids.jsonl", '{"input_ids": [1.5, 2]}\n', ["ids.jsonl line 1", "list of integers"]),
        ("top.json", "42", ["top.json", "list or object"]),
        ("empty.jsonl", "\n\n", ["contains no samples"]),
        ("data.csv", "a,b\n", ["unsupported extension", ".jsonl"]),
    ],
)
def test_bad_files_name_the_place(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        read_local_file(path)
    for word in words:
        assert word in str(err.value)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        read_local_file(tmp_path)
