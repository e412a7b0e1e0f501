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
        (dict(bits=1), "takes bits 2..8"),
        (dict(bits=9), "takes bits 2..8"),
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


# --- floating-point / microscaling presets and activation fields (issue 9) ---

@pytest.mark.parametrize("name, weights, acts", [
    ("MXFP4", ("mx_fp", 4, 32, 1), (4, 32, "mx_fp", True)),
    ("MXFP4_RCEIL", ("mx_fp", 4, 32, 1), (4, 32, "mx_fp_rceil", True)),
    ("MXFP8", ("mx_fp", 8, 32, 1), (8, 32, "mx_fp", True)),
    ("MXINT4", ("mx_int", 4, 32, 1), (4, 32, "mx_int", True)),
    ("NVFP4", ("nv_fp", 4, 16, 1), (4, 16, "nv_fp", False)),
    ("FPW8A16", ("fp", 8, 0, 1), (16, None, "float", True)),
    ("FP8_STATIC", ("fp", 8, -1, 1), (8, 0, "fp", False)),
    ("FP8_BLOCK", ("fp", 8, 128, 128), (8, 128, "fp", True)),
    ("FP8_DYNAMIC", ("fp", 8, -1, 1), (8, -1, "fp", True)),
    ("INT8_W8A8", ("int", 8, -1, 1), (8, -1, "int", True)),
])
def test_fp_presets_resolve_their_weight_and_activation_parts(name, weights, acts):
    s = resolve_scheme(name)
    assert (s.data_type, s.bits, s.group_size, s.group_rows) == weights
    act_bits, act_group, act_dtype, dynamic = acts
    assert s.act_bits == act_bits and s.act_dtype == act_dtype
    if act_bits < 16:
        assert (s.act_group, s.act_dynamic) == (act_group, dynamic)
        recorded = s.to_dict()  # the record holds resolved values, not "follow the weight's"
        assert (recorded["act_group_size"], recorded["act_data_type"]) == (act_group, act_dtype)


def test_int8_alias_and_weight_only_override():
    assert resolve_scheme("int8") == resolve_scheme("INT8_W8A8")
    a16 = resolve_scheme("MXFP4", act_bits=16)
    assert not a16.quantizes_activations and a16.act_dtype == "float" and a16.short_name() == "mxfp4"


def test_data_type_override_takes_the_types_own_group_and_bits():
    s = resolve_scheme("W4A16", data_type="nv_fp")
    assert (s.bits, s.group_size, s.sym) == (4, 16, True)
    s = resolve_scheme("W4A16", data_type="fp")
    assert (s.bits, s.group_size) == (8, 128)


@pytest.mark.parametrize("scheme, kwargs, message", [
    ("NVFP4", dict(group_size=32), "nv_fp needs group_size 16"),
    ("MXFP4", dict(group_size=64), "mx_fp needs group_size 32"),
    ("MXFP4", dict(act_group_size=16), "act_data_type mx_fp needs act_group_size 32"),
    ("MXFP4", dict(sym=False), "always sym"),
    ("MXFP4", dict(bits=3), "mx_fp takes bits 4, 8"),
    ("MXFP4", dict(act_dynamic=False), "cannot be static"),
    ("FP8_STATIC", dict(act_group_size=-1), "act_group_size must be 0"),
    ("W4A16", dict(act_bits=4, act_data_type="fp"), "act_data_type fp takes act_bits 8"),
    ("W4A16", dict(act_bits=8, act_data_type="half"), "act_data_type must be one of"),
    ("W4A16", dict(group_rows=128), "2-D blocks"),
])
def test_invalid_fp_combinations_name_the_rule(scheme, kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_scheme(scheme, **kwargs)


def test_short_names_are_distinct_for_every_preset():
    names = [resolve_scheme(p).short_name() for p in PRESETS if not p.startswith("GGUF:")]
    assert len(names) == len(set(names)), names
