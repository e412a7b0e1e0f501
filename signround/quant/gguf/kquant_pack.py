"""Byte layouts of the k-quant super-blocks (ggml ``ggml-common.h`` ``block_q2_K`` ... ``block_q6_K``).

``q[j]`` is the unsigned code of element j (0..255) of the block, ``sc[g]``/``mn[g]`` the integer
sub-scale/sub-min of group g. Fields in byte order::

  Q2_K (84)  [scales : 16][qs : 64][d f16 : 2][dmin f16 : 2]
             scales[g] = sc[g] | mn[g] << 4                      (16 groups of 16)
             qs[32 c + l] = q[128 c + l] | q[128 c + 32 + l] << 2 | q[128 c + 64 + l] << 4 | q[128 c + 96 + l] << 6

  Q3_K (110) [hmask : 32][qs : 64][scales : 12][d f16 : 2]        (16 groups of 16, sc = level - 32)
             hmask[l] bit b = q[32 b + l] >> 2;  qs as Q2_K with the low 2 bits of q
             level (6 bits, 0..63):   bytes 0..7  = level[k] & 0xF | (level[k + 8] & 0xF) << 4
                                      byte 8 + i  = sum over k of (level[4 k + i] >> 4) << 2 k

  Q4_K (144) [d f16 : 2][dmin f16 : 2][scales : 12][qs : 128]     (8 groups of 32)
             scales bytes 0..3  = sc[0..3] | (sc[4..7] >> 4) << 6
                          4..7  = mn[0..3] | (mn[4..7] >> 4) << 6
                          8..11 = sc[4..7] & 0xF | (mn[4..7] & 0xF) << 4
             qs[32 c + l] = q[64 c + l] | q[64 c + 32 + l] << 4

  Q5_K (176) [d f16 : 2][dmin f16 : 2][scales : 12][qh : 32][qs : 128]
             scales and qs (low nibbles) as Q4_K;  qh[l] bit b = q[32 b + l] >> 4

  Q6_K (210) [ql : 128][qh : 64][scales int8 : 16][d f16 : 2]    (16 groups of 16, sc signed)
             per half c (128 elements):  ql[64 c + l]      = q[128 c + l] & 0xF      | (q[128 c + 64 + l] & 0xF) << 4
                                         ql[64 c + 32 + l] = q[128 c + 32 + l] & 0xF | (q[128 c + 96 + l] & 0xF) << 4
                                         qh[32 c + l] = sum over k of (q[128 c + 32 k + l] >> 4) << 2 k
"""

from __future__ import annotations

import logging

import torch

from .bits import fp16_from_bytes, fp16_to_bytes, pack_bits, unpack_bits
from .formats import BlockParams
from .types import GGMLType

__all__ = ["KQUANT_LAYOUTS", "pack_kquant", "unpack_kquant"]

logger = logging.getLogger(__name__)

KQUANT_LAYOUTS: dict[GGMLType, tuple[tuple[str, int], ...]] = {
    GGMLType.Q2_K: (("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2)),
    GGMLType.Q3_K: (("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2)),
    GGMLType.Q4_K: (("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128)),
    GGMLType.Q5_K: (("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128)),
    GGMLType.Q6_K: (("ql", 128), ("qh", 64), ("scales", 16), ("d", 2)),
}



def _shifts(t: torch.Tensor, *shape: int) -> torch.Tensor:
    """The 2-bit field shifts 0, 2, 4, 6 as a uint8 tensor of ``shape`` on ``t``'s device."""
    return torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=t.device).reshape(*shape)


def _pack_crumbs(q: torch.Tensor) -> torch.Tensor:
    """(n, 256) codes -> (n, 64): four 2-bit fields per byte, 32 apart within each 128."""
    q4 = (q & 3).reshape(q.shape[0], 2, 4, 32)  # (n, half, k, l)
    return (q4 << _shifts(q, 1, 1, 4, 1)).sum(dim=2, dtype=torch.uint8).reshape(q.shape[0], 64)


def _unpack_crumbs(qs: torch.Tensor) -> torch.Tensor:
    q = (qs.reshape(qs.shape[0], 2, 1, 32) >> _shifts(qs, 1, 1, 4, 1)) & 3  # (n, half, k, l)
    return q.reshape(qs.shape[0], 256)


def _bit_planes(bits: torch.Tensor) -> torch.Tensor:
    """(n, 256) of 0/1 -> (n, 32): byte l holds bit b = element 32 b + l."""
    b = bits.reshape(bits.shape[0], 8, 32).transpose(1, 2)  # (n, l, b)
    return pack_bits(b.reshape(bits.shape[0], 256))


def _from_bit_planes(data: torch.Tensor) -> torch.Tensor:
    b = unpack_bits(data).reshape(data.shape[0], 32, 8)  # (n, l, b)
    return b.transpose(1, 2).reshape(data.shape[0], 256)


def _pack_nibble_pairs(q: torch.Tensor) -> torch.Tensor:
    """(n, 256) -> (n, 128): byte 32 c + l = q[64 c + l] (low) | q[64 c + 32 + l] (high)."""
    q = (q & 0xF).reshape(q.shape[0], 4, 2, 32)  # (n, c, half, l)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(q.shape[0], 128)


def _unpack_nibble_pairs(qs: torch.Tensor) -> torch.Tensor:
    q = qs.reshape(qs.shape[0], 4, 1, 32)  # (n, c, 1, l)
    return torch.cat([q & 0xF, q >> 4], dim=2).reshape(qs.shape[0], 256)


def _pack_scale_min_k4(sc: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
    """(n, 8) 6-bit scales and mins -> (n, 12) bytes (ggml ``get_scale_min_k4`` layout)."""
    sc, mn = sc.to(torch.uint8), mn.to(torch.uint8)
    b0 = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    b4 = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    b8 = (sc[:, 4:] & 0xF) | ((mn[:, 4:] & 0xF) << 4)
    return torch.cat([b0, b4, b8], dim=1)


def _unpack_scale_min_k4(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo_sc, lo_mn, mix = b[:, :4], b[:, 4:8], b[:, 8:12]
    sc = torch.cat([lo_sc & 63, (mix & 0xF) | ((lo_sc >> 6) << 4)], dim=1)
    mn = torch.cat([lo_mn & 63, (mix >> 4) | ((lo_mn >> 6) << 4)], dim=1)
    return sc.to(torch.int16), mn.to(torch.int16)


def _pack_q3_scales(level: torch.Tensor) -> torch.Tensor:
    """(n, 16) 6-bit levels -> (n, 12) bytes."""
    level = level.to(torch.uint8)
    low = (level[:, :8] & 0xF) | ((level[:, 8:] & 0xF) << 4)
    high = ((level >> 4) & 3).reshape(-1, 4, 4)  # (n, k, i): level[4 k + i] >> 4
    high = (high << _shifts(level, 1, 4, 1)).sum(dim=1, dtype=torch.uint8)
    return torch.cat([low, high], dim=1)


def _unpack_q3_scales(b: torch.Tensor) -> torch.Tensor:
    low = torch.cat([b[:, :8] & 0xF, b[:, :8] >> 4], dim=1)  # (n, 16)
    shifts = _shifts(b, 1, 4, 1)
    high = ((b[:, 8:12].reshape(-1, 1, 4) >> shifts) & 3).reshape(-1, 16)  # (n, k, i) -> level 4 k + i
    return (low | (high << 4)).to(torch.int16)


def _pack_q6(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = q.shape[0]
    q4 = q.reshape(n, 2, 4, 32)  # (n, half, k, l): element 128 half + 32 k + l
    lo = q4 & 0xF
    ql = (lo[:, :, :2] | (lo[:, :, 2:] << 4)).reshape(n, 128)
    qh = ((q4 >> 4) << _shifts(q, 1, 1, 4, 1)).sum(dim=2, dtype=torch.uint8).reshape(n, 64)
    return ql, qh


def _unpack_q6(ql: torch.Tensor, qh: torch.Tensor) -> torch.Tensor:
    n = ql.shape[0]
    l2 = ql.reshape(n, 2, 2, 32)  # (n, half, k mod 2, l)
    lo = torch.cat([l2 & 0xF, l2 >> 4], dim=2)  # (n, half, k, l)
    hi = (qh.reshape(n, 2, 1, 32) >> _shifts(qh, 1, 1, 4, 1)) & 3
    return (lo | (hi << 4)).reshape(n, 256)


def pack_kquant(qtype: GGMLType, params: BlockParams, codes: torch.Tensor) -> torch.Tensor:
    """(params, codes (n, 256) uint8) -> (n, type_size) uint8."""
    q = codes.to(torch.uint8)
    if qtype is GGMLType.Q2_K:
        scales = (params.scales.to(torch.uint8) & 0xF) | (params.mins.to(torch.uint8) << 4)
        return torch.cat([scales, _pack_crumbs(q), fp16_to_bytes(params.d), fp16_to_bytes(params.m)], dim=1)
    if qtype is GGMLType.Q3_K:
        hmask = _bit_planes(q >> 2)
        scales = _pack_q3_scales(params.scales + 32)
        return torch.cat([hmask, _pack_crumbs(q), scales, fp16_to_bytes(params.d)], dim=1)
    if qtype in (GGMLType.Q4_K, GGMLType.Q5_K):
        parts = [fp16_to_bytes(params.d), fp16_to_bytes(params.m), _pack_scale_min_k4(params.scales, params.mins)]
        if qtype is GGMLType.Q5_K:
            parts.append(_bit_planes(q >> 4))
        return torch.cat(parts + [_pack_nibble_pairs(q)], dim=1)
    if qtype is GGMLType.Q6_K:
        ql, qh = _pack_q6(q)
        scales = params.scales.to(torch.int8).view(torch.uint8)
        return torch.cat([ql, qh, scales, fp16_to_bytes(params.d)], dim=1)
    raise ValueError(f"{qtype.name} is not a k-quant type")


def unpack_kquant(qtype: GGMLType, data: torch.Tensor) -> tuple[BlockParams, torch.Tensor]:
    """(n, type_size) uint8 -> (params, codes (n, 256) uint8)."""
    if qtype is GGMLType.Q2_K:
        sc, qs, d, dmin = data[:, :16], data[:, 16:80], data[:, 80:82], data[:, 82:84]
        params = BlockParams(
            qtype, fp16_from_bytes(d), m=fp16_from_bytes(dmin),
            scales=(sc & 0xF).to(torch.int16), mins=(sc >> 4).to(torch.int16),
        )
        return params, _unpack_crumbs(qs)
    if qtype is GGMLType.Q3_K:
        hmask, qs, sc, d = data[:, :32], data[:, 32:96], data[:, 96:108], data[:, 108:110]
        codes = _unpack_crumbs(qs) | (_from_bit_planes(hmask) << 2)
        return BlockParams(qtype, fp16_from_bytes(d), scales=_unpack_q3_scales(sc) - 32), codes
    if qtype in (GGMLType.Q4_K, GGMLType.Q5_K):
        d, dmin = fp16_from_bytes(data[:, :2]), fp16_from_bytes(data[:, 2:4])
        sc, mn = _unpack_scale_min_k4(data[:, 4:16])
        codes = _unpack_nibble_pairs(data[:, -128:])
        if qtype is GGMLType.Q5_K:
            codes = codes | (_from_bit_planes(data[:, 16:48]) << 4)
        return BlockParams(qtype, d, m=dmin, scales=sc, mins=mn), codes
    if qtype is GGMLType.Q6_K:
        ql, qh, sc, d = data[:, :128], data[:, 128:192], data[:, 192:208], data[:, 208:210]
        scales = sc.contiguous().view(torch.int8).to(torch.int16)
        return BlockParams(qtype, fp16_from_bytes(d), scales=scales), _unpack_q6(ql, qh)
    raise ValueError(f"{qtype.name} is not a k-quant type")
