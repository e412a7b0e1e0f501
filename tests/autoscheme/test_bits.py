import pytest

from signround.autoscheme.bits import layer_bits
from signround.autoscheme.config import AutoScheme, resolve_options
from signround.errors import BadInputError
from signround.schemes import resolve_scheme

SHAPE = (256, 1024)
N = SHAPE[0] * SHAPE[1]


@pytest.mark.parametrize("name,bpw", [
    ("W4A16", 4 + (16 + 4) / 128),  # 4.156: sym int still pays a 4-bit zero point
    ("W2A16G64", 2 + (16 + 2) / 64),
    ("NVFP4", 4 + 8 / 16),  # 8-bit E4M3 scales, no zero point
    ("MXFP4", 4 + 8 / 32),
    ("GGUF:Q4_K_S", 144 * 8 / 256),  # 4.5: real block bytes
    ("GGUF:Q2_K_S", 84 * 8 / 256),  # 2.625
    ("GGUF:Q6_K", 210 * 8 / 256),
    ("GGUF:Q8_0", 34 * 8 / 32),
    ("BF16", 16.0),
])
def test_bits_per_weight(name, bpw):
    assert layer_bits(resolve_scheme(name), SHAPE) == pytest.approx(bpw * N, abs=0)
    assert abs(layer_bits(resolve_scheme("W4A16"), SHAPE) / N - 4.156) < 1e-3


def test_group_size_rules_and_ignore_flag():
    s = resolve_scheme("W4A16")
    assert layer_bits(s.replace(group_size=-1), SHAPE) == 4 * N + 256 * 20
    assert layer_bits(s.replace(group_size=0), SHAPE) == 4 * N + 20
    assert layer_bits(s.replace(sym=False), SHAPE) == layer_bits(s, SHAPE)  # int pays the zp either way
    assert layer_bits(s.replace(group_size=96 * 0 + 128), (256, 1000)) == 4 * 256 * 1000 + 256 * 8 * 20  # ceil
    assert layer_bits(s, SHAPE, ignore_scale_zp_bits=True) == 4 * N
    assert layer_bits(resolve_scheme("GGUF:Q4_K_S"), SHAPE, ignore_scale_zp_bits=True) == 4 * N
    assert layer_bits(resolve_scheme("BF16"), SHAPE, ignore_scale_zp_bits=True) == 16 * N


def test_gguf_shape_fallback():
    # a row of 96 does not fit Q2_K's 256 block: llama.cpp falls back to Q4_0 (18 bytes per 32)
    assert layer_bits(resolve_scheme("GGUF:Q2_K_S"), (64, 96)) == 64 * 3 * 18 * 8


def test_options_deduplicated_and_checked():
    assert list(resolve_options(["GGUF:Q4_K_S", "GGUF:Q4_K_M", "W4A16"])) == ["GGUF:Q4_K_S", "W4A16"]
    with pytest.raises(BadInputError, match="W9A16"):
        AutoScheme(avg_bits=3, options=("W2A16", "W9A16"))
    with pytest.raises(BadInputError, match="mixed"):
        AutoScheme(avg_bits=3, options=("W4A16_MIXED",))
    with pytest.raises(BadInputError, match="avg_bits"):
        AutoScheme(avg_bits=-1, options=("W4A16",))
    a = AutoScheme(avg_bits=3, options="W2A16G64,W4A16", shared_layers="q_proj,k_proj;up_proj")
    assert a.options == ("W2A16G64", "W4A16") and a.shared_layers == (("q_proj", "k_proj"), ("up_proj",))
