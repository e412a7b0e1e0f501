"""get_calibration_data on every source type, with exact token ids, counts and shapes."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from signround.calib import CalibrationData, get_calibration_data
from signround.calib.dataset import allocate_samples

LONG = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Rain fell on the old town all night, and by morning the river had risen to the bridge.",
    "She counted the coins twice, put them in a leather purse and walked to the market square.",
]


def ids(tokenizer, text: str, special: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def rows(data: CalibrationData) -> list[list[int]]:
    return sorted(data.input_ids.tolist())


def test_list_of_strings_truncates_to_seqlen(tokenizer):
    data = get_calibration_data(tokenizer, LONG, nsamples=3, seqlen=10)
    assert data.input_ids.shape == (3, 10) and data.input_ids.dtype == torch.int64
    assert data.attention_mask is None
    assert rows(data) == sorted(ids(tokenizer, t)[:10] for t in LONG)
    assert "in-memory dataset (3 texts): 3 samples" in data.source


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".txt"])
def test_each_local_file_type(tokenizer, tmp_path, suffix):
    path = tmp_path / f"calib{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps([{"text": t} for t in LONG]))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(t) + "\n" for t in LONG))
    else:
        path.write_text("\n\n".join(LONG))
    data = get_calibration_data(tokenizer, str(path), nsamples=3, seqlen=12)
    assert rows(data) == sorted(ids(tokenizer, t)[:12] for t in LONG)
    assert str(path) in data.source


def test_token_rows_are_used_as_they_are(tokenizer):
    dataset = [torch.arange(100, 106), torch.tensor([1, 2, 3]), [50, 51, 52, 53, 54], torch.tensor([[7, 8, 9, 10]] * 2)]
    data = get_calibration_data(tokenizer, dataset, nsamples=8, seqlen=4)
    assert rows(data) == [[7, 8, 9, 10], [7, 8, 9, 10], [50, 51, 52, 53], [100, 101, 102, 103]]


def test_two_d_tensor_rows_without_tokenizer():
    data = get_calibration_data(None, torch.arange(12).view(3, 4), nsamples=3, seqlen=4, seed=0)
    assert rows(data) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_padded_tokenizer_output_keeps_its_mask(tokenizer):
    batch = {"input_ids": torch.tensor([[5, 6, 7, 2], [8, 9, 10, 11]]), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    data = get_calibration_data(tokenizer, batch, nsamples=2, seqlen=4, seed=1)
    by_row = {tuple(r): m for r, m in zip(data.input_ids.tolist(), data.attention_mask.tolist())}
    assert by_row == {(5, 6, 7, 2): [1, 1, 1, 0], (8, 9, 10, 11): [1, 1, 1, 1]}
    full = get_calibration_data(tokenizer, {"input_ids": [[1, 2], [3, 4]], "attention_mask": [[1, 1], [1, 1]]}, nsamples=2, seqlen=2)
    assert full.attention_mask is None


def test_concat_texts_with_eos_between(tokenizer):
    texts = ["one two three", "four five", "six seven eight nine ten"]
    stream = [t for text in texts for t in ids(tokenizer, text, special=False) + [tokenizer.eos_token_id]]
    data = get_calibration_data(tokenizer, texts, nsamples=50, seqlen=4, concat=True)
    expected = [stream[i : i + 4] for i in range(0, len(stream) - 3, 4)]
    assert data.input_ids.shape == (len(expected), 4)
    assert rows(data) == sorted(expected)


def test_concat_token_rows_joined_back_to_back(tokenizer):
    data = get_calibration_data(tokenizer, [[1, 2, 3], [4, 5, 6, 7, 8], [9]], nsamples=5, seqlen=4, concat=True)
    assert rows(data) == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_concat_spec_option_on_a_file(tokenizer, write_jsonl):
    path = write_jsonl("short.jsonl", ["a b", "c d", "e f", "g h"])
    stream = [t for text in ["a b", "c d", "e f", "g h"] for t in ids(tokenizer, text, special=False) + [2]]
    data = get_calibration_data(tokenizer, f"{path}:concat=True", nsamples=10, seqlen=3)
    assert rows(data) == sorted(stream[i : i + 3] for i in range(0, len(stream) - 2, 3))


def test_short_samples_dropped_with_a_count(tokenizer, caplog):
    texts = LONG + ["tiny", "also tiny"]
    with caplog.at_level(logging.WARNING):
        data = get_calibration_data(tokenizer, texts, nsamples=5, seqlen=15)
    assert data.input_ids.shape == (3, 15)
    assert "3 of 5 samples have at least seqlen=15 tokens; dropped the 2 shorter ones" in caplog.text
    assert "only 3 calibration samples of 15 tokens are available, fewer than nsamples=5" in caplog.text


def test_no_sample_long_enough_is_an_error(tokenizer):
    longest = max(len(ids(tokenizer, t)) for t in LONG)
    with pytest.raises(ValueError) as err:
        get_calibration_data(tokenizer, LONG, nsamples=3, seqlen=500)
    message = str(err.value)
    assert f"the longest has {longest})" in message and "concat=True" in message and "seqlen=500" in message


def test_num_and_even_mixing(tokenizer, write_jsonl):
    a = write_jsonl("a.jsonl", [{"input_ids": [1000 + i] * 4} for i in range(20)])
    b = write_jsonl("b.jsonl", [{"input_ids": [2000 + i] * 4} for i in range(20)])
    c = write_jsonl("c.jsonl", [{"input_ids": [3000 + i] * 4} for i in range(3)])
    data = get_calibration_data(tokenizer, f"{a}:num=5,{b},{c}", nsamples=16, seqlen=4)
    firsts = [r[0] // 1000 for r in data.input_ids.tolist()]
    assert (firsts.count(1), firsts.count(2), firsts.count(3)) == (5, 8, 3)
    assert len({tuple(r) for r in data.input_ids.tolist()}) == 16  # no sample twice
    assert f"{a}: 5 samples" in data.source and f"{b}: 8 samples" in data.source


def test_num_larger_than_nsamples_is_an_error(tokenizer, write_jsonl):
    a = write_jsonl("a.jsonl", [{"input_ids": [1] * 4}])
    with pytest.raises(ValueError, match="add up to 200, more than nsamples=128"):
        get_calibration_data(tokenizer, f"{a}:num=200", seqlen=4)


def test_seed_makes_it_deterministic(tokenizer, write_jsonl):
    a = write_jsonl("a.jsonl", [{"input_ids": [i] * 4} for i in range(40)])
    first = get_calibration_data(tokenizer, a, nsamples=10, seqlen=4, seed=7)
    again = get_calibration_data(tokenizer, a, nsamples=10, seqlen=4, seed=7)
    other = get_calibration_data(tokenizer, a, nsamples=10, seqlen=4, seed=8)
    assert torch.equal(first.input_ids, again.input_ids)
    assert not torch.equal(first.input_ids, other.input_ids)
    assert first.input_ids[:, 0].tolist() != list(range(10))  # shuffled, not the file's first ten


def test_chat_template_with_system_prompt(tokenizer, write_jsonl):
    path = write_jsonl("chat.jsonl", [{"text": "What is the capital of France?"}])
    data = get_calibration_data(tokenizer, f"{path}:system_prompt=Be brief.", nsamples=1, seqlen=16)
    rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert data.input_ids[0].tolist() == ids(tokenizer, rendered, special=False)[:16]
    plain = get_calibration_data(tokenizer, f"{path}:apply_chat_template", nsamples=1, seqlen=30)
    expected = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                             tokenize=False, add_generation_prompt=True)
    assert "named SmolLM" in expected  # the template's own default system turn
    assert plain.input_ids[0].tolist() == ids(tokenizer, expected, special=False)[:30]


def test_chat_template_without_system_role_is_retried(write_jsonl, caplog):
    from transformers import AutoTokenizer

    from signround.testing import smollm2_hf_dir

    strict = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<turn>{{ m['content'] }}</turn>{% endfor %}{% if add_generation_prompt %}<reply>{% endif %}"
    )
    path = write_jsonl("chat.jsonl", ["Tell me a story about a lighthouse keeper."])
    with caplog.at_level(logging.WARNING):
        data = get_calibration_data(strict, f"{path}:system_prompt=Be brief.", nsamples=1, seqlen=8)
    assert "rejects the system role" in caplog.text
    expected = strict("<turn>Tell me a story about a lighthouse keeper.</turn><reply>", add_special_tokens=False)["input_ids"]
    assert data.input_ids[0].tolist() == expected[:8]


def test_chat_template_missing_is_an_error(tokenizer, write_jsonl):
    from transformers import AutoTokenizer

    from signround.testing import smollm2_hf_dir

    bare = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    bare.chat_template = None
    path = write_jsonl("chat.jsonl", ["hello"])
    with pytest.raises(ValueError, match="has no chat template"):
        get_calibration_data(bare, f"{path}:apply_chat_template", nsamples=1, seqlen=2)


def test_missing_file_in_a_spec(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        get_calibration_data(tokenizer, f"{tmp_path}/missing.jsonl:num=2", nsamples=4, seqlen=8)
    with pytest.raises(FileNotFoundError, match="nested/dir/file"):
        get_calibration_data(tokenizer, "nested/dir/file", nsamples=4, seqlen=8)


def test_unknown_option_fails_before_reading(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="unknown option 'shuffle'.*valid options: num"):
        get_calibration_data(tokenizer, f"{tmp_path}/missing.jsonl:shuffle=True")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"dataset": "x.jsonl", "concat": True}, ValueError, "':concat=True'"),
        ({"dataset": [], "nsamples": 2}, ValueError, "empty list"),
        ({"dataset": [3.5], "nsamples": 2}, TypeError, "dataset element 0"),
        ({"dataset": ["a"], "nsamples": 0}, ValueError, "nsamples must be an integer >= 1"),
        ({"dataset": ["a"], "seqlen": -1}, ValueError, "seqlen must be an integer >= 1"),
        ({"dataset": torch.rand(2, 3)}, TypeError, "integer token ids"),
    ],
)
def test_bad_arguments(tokenizer, kwargs, error, words):
    with pytest.raises(error, match=words):
        get_calibration_data(tokenizer, **kwargs)


def test_allocation_rules():
    assert allocate_samples([5, 100, 100], [None, None, None], 128) == [5, 61, 62]
    assert allocate_samples([50, 100, 100], [10, None, None], 128) == [10, 59, 59]
    assert allocate_samples([2, 100], [5, None], 10) == [2, 8]  # a short num= source is filled by the others
    assert allocate_samples([3, 4], [None, None], 128) == [3, 4]
    with pytest.raises(ValueError, match="add up to 12, more than nsamples=10"):
        allocate_samples([10, 10], [6, 6], 10)


def test_concat_chunks_start_with_the_tokenizers_bos():
    """A Llama-style tokenizer that prepends BOS gets BOS at the start of every concatenated chunk."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "c": 4, "[UNK]": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    bos_tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")
    data = get_calibration_data(bos_tok, ["a b c", "c b"], nsamples=2, seqlen=4, concat=True)
    assert rows(data) == [[0, 1, 4, 3], [0, 2, 3, 4]]  # stream a b c </s> c b </s>, 3 tokens per chunk after BOS
    plain = get_calibration_data(bos_tok, ["a b c", "c b"], nsamples=2, seqlen=3)
    assert rows(plain) == [[0, 2, 3], [0, 4, 3]]  # BOS counts toward seqlen
