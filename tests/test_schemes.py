"""Schemes: presets, overrides and the validation of bad values."""

import pytest

from signround.schemes import KEEP, PRESETS, QuantScheme, resolve_scheme


def test_presets_are_full_range_sym_int_group_128_unless_named():
    assert resolve_scheme("W4A16") == QuantScheme(bits=4, group_size=128, sym=True)
    assert resolve_scheme("w2a16g64") == QuantScheme(bits=2, group_size=64, sym=True)
    assert PRESETS["W2A16G32"].group_size == 32
    assert resolve_scheme("BF16") == KEEP and not KEEP.is_quantized


def test_overrides_win_and_none_means_unset():
    s = resolve_scheme("W4A16", bits=3, group_size=-1, sym=False)
    assert (s.bits, s.group_size, s.sym) == (3, -1, False)
    assert resolve_scheme("W4A16", bits=None) == PRESETS["W4A16"]
    assert resolve_scheme({"scheme": "W2A16", "group_size": 32}).bits == 2
    assert resolve_scheme({"bits": 8}, base=PRESETS["W2A16G64"]).group_size == 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bits=1), "bits must be in 2..8"),
        (dict(bits=9), "bits must be in 2..8"),
        (dict(group_size=100), "power of two"),
        (dict(group_size=-2), "power of two"),
    ],
)
def test_bad_values_fail_with_the_culprit_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_scheme("W4A16", **kwargs)


def test_unknown_scheme_lists_presets():
    with pytest.raises(ValueError, match="unknown scheme 'W5A5'.*W4A16"):
        resolve_scheme("W5A5")
    with pytest.raises(ValueError, match="unknown scheme keys"):
        resolve_scheme({"bitz": 4})


def test_group_sizes_minus_one_and_zero_are_valid():
    assert resolve_scheme("W4A16", group_size=0).group_size == 0
    assert resolve_scheme("W4A16", group_size=-1).short_name() == "w4gc"
