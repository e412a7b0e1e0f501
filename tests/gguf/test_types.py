"""The ggml type table agrees with gguf-py's, and the registry refuses duplicates."""

import gguf
import pytest

from signround.quant.gguf import GGMLType, format_of, parse_type, registered_types, type_facts
from signround.quant.gguf.formats import BlockFormat
from signround.quant.gguf.types import TypeFacts

ALL = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("name", ALL)
def test_ids_and_sizes_match_gguf(name):
    t = GGMLType[name]
    gt = gguf.GGMLQuantizationType[name]
    assert int(t) == int(gt)
    assert (type_facts(t).block_size, type_facts(t).type_size) == gguf.GGML_QUANT_SIZES[gt]


def test_every_type_is_registered_once():
    assert sorted(t.name for t in registered_types()) == sorted(ALL)


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="registered twice"):

        class Q4_0Again(BlockFormat, facts=type_facts("q4_0"), layout=(("d", 2), ("qs", 16))):
            pass


def test_layout_must_add_up_to_type_size():
    with pytest.raises(AssertionError, match="adds up to 17 bytes"):

        class Broken(BlockFormat, facts=TypeFacts(GGMLType.Q4_0, 32, 18, 32, 15, 8), layout=(("d", 2), ("qs", 15))):
            pass


def test_parse_type():
    assert parse_type("q4_k") is GGMLType.Q4_K
    assert parse_type(12) is GGMLType.Q4_K
    assert format_of("Q6_K").facts.zero == 32
    with pytest.raises(ValueError, match="unknown GGML type 'q7_k'"):
        parse_type("q7_k")


def test_bits_per_weight():
    assert type_facts("q4_k").bits_per_weight == 4.5
    assert type_facts("q6_k").bits_per_weight == 6.5625
