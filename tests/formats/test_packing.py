"""Bit packing: exact round trips and the GPTQ word layout."""

import pytest
import torch

from signround.formats.packing import pack_bits, unpack_bits


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("dim", [0, 1])
def test_round_trip(bits, dim):
    codes = torch.randint(0, 2**bits, (64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(bits))
    if dim == 1:
        codes = codes.t().contiguous()
    packed = pack_bits(codes, bits, dim)
    assert packed.dtype == torch.int32
    assert packed.shape[dim] == codes.shape[dim] * bits // 32
    assert torch.equal(unpack_bits(packed, bits, dim), codes)


def test_4bit_word_layout_is_lsb_first():
    codes = torch.zeros(32, 1, dtype=torch.uint8)
    codes[0], codes[1], codes[7] = 1, 15, 9
    word = int(pack_bits(codes, 4)[0, 0]) & 0xFFFFFFFF
    assert word == 0x900000F1
    assert int(pack_bits(torch.full((32, 1), 7, dtype=torch.uint8), 4)[0, 0]) == 0x77777777


def test_3bit_cross_word_layout():
    codes = torch.zeros(32, 1, dtype=torch.uint8)
    codes[10] = 0b111  # bits 30-32: two low bits in word 0, the high bit in word 1
    codes[21] = 0b101  # bits 63-65: low bit in word 1 (bit 31), two high bits in word 2
    w = [int(x) & 0xFFFFFFFF for x in pack_bits(codes, 3)[:, 0]]
    assert w == [0b11 << 30, 1 | (1 << 31), 0b10]


def test_unpack_cuts_padded_rows_and_rejects_bad_lengths():
    codes = torch.randint(0, 16, (64, 8), dtype=torch.uint8)
    packed = pack_bits(codes, 4)
    assert torch.equal(unpack_bits(packed, 4, length=40), codes[:40])
    with pytest.raises(ValueError, match="multiple of 32"):
        pack_bits(codes[:40], 4)
    with pytest.raises(ValueError, match="out of range"):
        pack_bits(torch.full((32, 2), 16, dtype=torch.uint8), 4)
