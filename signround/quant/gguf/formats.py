"""The block-format contract shared by every ggml type, and the parts of it that are the same for all.

A quantized tensor in a ggml type is three things, each with its own step (so that SignRound can
tune the middle one with the other two held fixed):

1. **search** ``(w (rows, cols), imatrix (cols,) | None, mode) -> (BlockParams, codes)``: the
   per-block scales (and mins), llama.cpp-style, plus the codes the search itself settled on;
2. **rounding** ``codes = round(w / s + v)`` (or ``round((w + m) / s + v)`` for types with a min)
   with the parameters fixed and an optional additive offset ``v`` of the same shape as ``w``;
   ``fake_quant`` is the same map with a straight-through rounding, differentiable in ``v``;
3. **packing** codes + parameters into the exact ggml block bytes, and back (``unpack``).

Blocks are rows of ``block_size`` consecutive elements of a weight row; tensors here are laid out
(n_blocks, block_size) for values and codes, (n_blocks, type_size) uint8 for bytes (STYLE 3).

Each concrete type declares ``facts`` and ``layout`` (the byte fields of one block, in order) and
is registered when its class is created; the field sizes must add up to ``type_size``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch

from ...method import Start
from .types import GGMLType, TypeFacts, register_format

__all__ = ["SearchMode", "search_mode", "BlockParams", "GGMLFormat", "BlockFormat", "Rounding", "round_ste"]

logger = logging.getLogger(__name__)


class SearchMode(str, Enum):
    """How block parameters are chosen.

    - ``RTN``: plain min/max (or absmax) scales, no search (``disable_opt_rtn``);
    - ``REF``: llama.cpp's quantizer without an importance matrix (``quantize_row_*_ref``);
    - ``IMATRIX``: llama.cpp's importance-weighted searches (``quantize_row_*_impl``); without an
      imatrix the importance is uniform.
    """

    RTN = "rtn"
    REF = "ref"
    IMATRIX = "imatrix"


def search_mode(start: Start, has_imatrix: bool) -> SearchMode:
    """The one place a run's start and the presence of an importance matrix choose a tensor's search.

    ``Start.MINMAX`` -> ``RTN``; ``Start.SEARCH`` -> ``IMATRIX`` where the tensor has an imatrix, else
    ``REF`` (as llama.cpp: tensors the imatrix does not cover use the plain search).
    """
    if not start.searches:
        return SearchMode.RTN
    return SearchMode.IMATRIX if has_imatrix else SearchMode.REF


class Rounding(str, Enum):
    """How a type rounds ``t = w / s`` to an integer (each as ggml does it)."""

    HALF_EVEN = "half_even"  # nearest_int (k-quants)
    HALF_UP = "half_up"  # (int)(t + zero + 0.5) (q4_0, q4_1, q5_0, q5_1)
    HALF_AWAY = "half_away"  # roundf (q8_0)


@dataclass(frozen=True)
class BlockParams:
    """Per-block parameters of one tensor in one ggml type (``n_blocks`` blocks, ``G`` groups per block).

    - ``d``: (n_blocks,) float32, exactly representable in float16: the block scale (q4_0 ... q8_0)
      or the super-block scale (k-quants);
    - ``m``: (n_blocks,) float32 fp16-exact or None: the block min of q4_1/q5_1 (``w = d * q + m``)
      or the super-block min scale ``dmin`` of q2_k/q4_k/q5_k (``w = d * sc * q - dmin * mn``);
    - ``scales``: (n_blocks, G) int16 or None: k-quant sub-block scale multipliers, as ggml multiplies
      them (q3_k: -32..31, q6_k: -128..127, q2_k: 0..15, q4_k/q5_k: 0..63);
    - ``mins``: (n_blocks, G) int16 or None: q2_k/q4_k/q5_k sub-block min multipliers.
    """

    qtype: GGMLType
    d: torch.Tensor
    m: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    mins: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.d.shape[0]
        for name in ("m", "scales", "mins"):
            t = getattr(self, name)
            if t is not None and t.shape[0] != n:
                raise ValueError(f"{self.qtype.name} params: {name} has {t.shape[0]} blocks, d has {n}")

    @property
    def n_blocks(self) -> int:
        return self.d.shape[0]

    def group_scale(self) -> torch.Tensor:
        """(n_blocks, G) float32 effective scale of each group, computed as ggml does (``d * sc``)."""
        if self.scales is None:
            return self.d[:, None]
        return self.d[:, None] * self.scales.float()

    def group_min(self) -> torch.Tensor | None:
        """(n_blocks, G) float32 ``mn`` with ``w = s * q - mn``, or None for symmetric types."""
        if self.m is None:
            return None
        if self.mins is None:
            return -self.m[:, None]  # q4_1 / q5_1: d * q + m == d * q - (-m) exactly
        return self.m[:, None] * self.mins.float()

    def to(self, device: torch.device | str) -> "BlockParams":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return BlockParams(self.qtype, self.d.to(device), move(self.m), move(self.scales), move(self.mins))


def round_ste(t: torch.Tensor, rounding: Rounding = Rounding.HALF_EVEN, zero: int = 0) -> torch.Tensor:
    """Round like ggml in the forward pass, identity gradient in the backward pass."""
    return t + (_round(t, rounding, zero) - t).detach()


def _round(t: torch.Tensor, rounding: Rounding, zero: int) -> torch.Tensor:
    if rounding is Rounding.HALF_EVEN:
        return torch.round(t)
    if rounding is Rounding.HALF_UP:
        # ggml adds the zero point and 0.5 in one float32 step, then truncates.
        return torch.floor(t + (zero + 0.5)) - zero
    a = t.abs()
    f = torch.floor(a)
    return torch.sign(t) * (f + torch.floor(2 * (a - f)))  # roundf, exact for all float32


class GGMLFormat:
    """Base of every registered ggml type (block formats and float pass-through)."""

    facts: ClassVar[TypeFacts]
    layout: ClassVar[tuple[tuple[str, int], ...]]

    def __init_subclass__(cls, *, facts: TypeFacts | None = None, layout: tuple[tuple[str, int], ...] = (), **kw):
        super().__init_subclass__(**kw)
        if facts is None:  # an abstract intermediate class
            return
        if sum(size for _, size in layout) != facts.type_size:
            raise AssertionError(
                f"{cls.__name__}: layout {layout} adds up to {sum(s for _, s in layout)} bytes, type_size is {facts.type_size}"
            )
        cls.facts = facts
        cls.layout = layout
        register_format(cls)


class BlockFormat(GGMLFormat):
    """A quantized ggml block type. Subclasses implement ``search``, ``pack`` and ``unpack``."""

    rounding: ClassVar[Rounding] = Rounding.HALF_EVEN

    @classmethod
    def search(
        cls, w: torch.Tensor, imatrix: torch.Tensor | None, mode: SearchMode
    ) -> tuple[BlockParams, torch.Tensor]:
        """(rows, cols) float32 -> (params, codes (n_blocks, block_size) uint8)."""
        raise NotImplementedError

    @classmethod
    def pack(cls, params: BlockParams, codes: torch.Tensor) -> torch.Tensor:
        """-> (n_blocks, type_size) uint8, the ggml block bytes."""
        raise NotImplementedError

    @classmethod
    def unpack(cls, data: torch.Tensor) -> tuple[BlockParams, torch.Tensor]:
        """(n_blocks, type_size) uint8 -> (params, codes)."""
        raise NotImplementedError

    # -- generic parts ---------------------------------------------------------------------------

    @classmethod
    def _code_range(cls) -> tuple[int, int]:
        """Range of the rounded integer before the zero point is added."""
        z = cls.facts.zero or 0
        return -z, cls.facts.qmax - z

    @classmethod
    def _grouped(cls, t: torch.Tensor) -> torch.Tensor:
        f = cls.facts
        return t.reshape(-1, f.n_groups, f.group_size)  # (n_blocks, G, group_size)

    @classmethod
    def round_codes(
        cls,
        x: torch.Tensor,
        params: BlockParams,
        v: torch.Tensor | None = None,
        fallback: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Codes for blocks ``x`` (n_blocks, block_size) with fixed ``params`` and optional offset ``v``.

        ``q = clamp(round(x / s + v)) + zero`` (or ``round((x + mn) / s + v)`` for types with a min),
        computed in float32 the way ggml's final pass does. Groups whose scale is 0 keep ``fallback``
        codes (the search's own, as ggml does) or 0. Returns (n_blocks, block_size) uint8.
        """
        lo, hi = cls._code_range()
        s = params.group_scale()[..., None]  # (n_blocks, G, 1)
        mn = params.group_min()
        dead = s == 0
        s_safe = torch.where(dead, torch.ones_like(s), s)
        xg = cls._grouped(x.float())
        t = xg / s_safe if mn is None else (xg + mn[..., None]) / s_safe
        if v is not None:
            t = t + cls._grouped(v.float())
        q = _round(t, cls.rounding, cls.facts.zero or 0).clamp(lo, hi) - lo
        base = torch.zeros_like(q) if fallback is None else cls._grouped(fallback.float())
        q = torch.where(dead, base, q)
        return q.reshape(x.shape).to(torch.uint8)

    @classmethod
    def dequantize(cls, params: BlockParams, codes: torch.Tensor) -> torch.Tensor:
        """(n_blocks, block_size) float32 values, bit-identical to ggml's ``dequantize_row_*``."""
        s = params.group_scale()[..., None]  # (n_blocks, G, 1)
        mn = params.group_min()
        q = cls._grouped(codes).float()
        if mn is None:
            out = s * (q - float(cls.facts.zero or 0))
        else:
            out = s * q - mn[..., None]
        return out.reshape(codes.shape)

    @classmethod
    def fake_quant(cls, x: torch.Tensor, params: BlockParams, v: torch.Tensor | None = None) -> torch.Tensor:
        """Dequantized blocks as a differentiable function of ``v`` (and ``x``), params fixed.

        Forward: exactly ``dequantize(round_codes(x, params, v))`` except in groups whose scale is 0
        (which dequantize to ``-mn`` or 0 whatever the code). Backward: straight-through rounding.
        """
        lo, hi = cls._code_range()
        s = params.group_scale()[..., None].to(x.dtype)  # (n_blocks, G, 1)
        mn = params.group_min()
        s_safe = torch.where(s == 0, torch.ones_like(s), s)
        xg = cls._grouped(x)
        t = xg / s_safe if mn is None else (xg + mn[..., None]) / s_safe
        if v is not None:
            t = t + cls._grouped(v)
        q = round_ste(t, cls.rounding, cls.facts.zero or 0).clamp(lo, hi)
        out = s * q if mn is None else s * (q - lo) - mn[..., None]
        return out.reshape(x.shape)
