"""Whole-tensor entry points of the ggml numerics: search, round, pack, dequantize.

A weight matrix ``w`` is (rows, cols) = (out_features, in_features), the HF ``nn.Linear`` layout,
which is also ggml's row layout (``ne[0] = cols``): every block lies inside one row. An importance
matrix ``imatrix`` is the per-input-column mean of squared activations, shape (cols,).

Typical use::

    q = quantize_tensor(w, "q4_k", imatrix=imp)           # search + RTN codes (llama.cpp's choice)
    q2 = requantize(w, q, v)                               # same params, codes = round(w / s + v)
    w_hat = fake_quantize(w, q.params, "q4_k", v)          # differentiable in v (SignRound)
    data = q.to_bytes()                                    # (rows, row_bytes) uint8 ggml blocks
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ...method import Start
from .formats import BlockFormat, BlockParams, SearchMode, search_mode
from .floats import FloatFormat
from .types import GGMLType, format_of, parse_type

__all__ = [
    "GGUFQuantized",
    "quantize_tensor",
    "requantize",
    "fake_quantize",
    "dequantize_tensor",
    "encode_tensor",
    "decode_tensor",
    "unpack_tensor",
    "check_shape",
]

logger = logging.getLogger(__name__)

ROW_CHUNK_ELEMENTS = 1 << 22  # the searches run on at most this many weights at a time


def _block_format(qtype: GGMLType | str) -> type[BlockFormat]:
    fmt = format_of(qtype)
    if not issubclass(fmt, BlockFormat):
        raise ValueError(f"{fmt.facts.qtype.name} is a float type, not a quantized block type")
    return fmt


def check_shape(shape: tuple[int, ...], qtype: GGMLType | str, name: str = "tensor") -> None:
    """Raise if a (rows, cols) weight cannot be stored in ``qtype``."""
    fmt = format_of(qtype)
    if len(shape) != 2:
        raise ValueError(f"{name}: expected a 2-D weight (rows, cols), got shape {tuple(shape)}")
    bs = fmt.facts.block_size
    if shape[1] % bs:
        raise ValueError(
            f"row size ({shape[1]}) is not a multiple of {fmt.facts.qtype.name} block size ({bs}) in {name}"
        )


@dataclass(frozen=True)
class GGUFQuantized:
    """One weight matrix in a ggml block type; the codes are the source of truth.

    - ``shape``: (rows, cols);
    - ``params``: per-block parameters, ``n_blocks = rows * cols / block_size`` blocks in row-major order;
    - ``codes``: (n_blocks, block_size) uint8 unsigned codes (``formats.BlockParams`` gives their meaning).
    """

    qtype: GGMLType
    shape: tuple[int, int]
    params: BlockParams
    codes: torch.Tensor

    def __post_init__(self) -> None:
        f = format_of(self.qtype).facts
        n_blocks = self.shape[0] * self.shape[1] // f.block_size
        if tuple(self.codes.shape) != (n_blocks, f.block_size) or self.params.n_blocks != n_blocks:
            raise ValueError(
                f"{self.qtype.name} tensor {self.shape}: expected codes ({n_blocks}, {f.block_size}) and "
                f"{n_blocks} blocks of params, got codes {tuple(self.codes.shape)} and {self.params.n_blocks} blocks"
            )

    @property
    def format(self) -> type[BlockFormat]:
        return _block_format(self.qtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(rows, cols), bit-identical to ggml's (and gguf-py's) dequantization in float32."""
        return self.format.dequantize(self.params, self.codes).reshape(self.shape).to(dtype)

    def to_bytes(self) -> torch.Tensor:
        """(rows, cols / block_size * type_size) uint8: the ggml blocks of each row."""
        for name in ("d", "m"):
            t = getattr(self.params, name)
            if t is not None and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"{self.qtype.name} tensor {self.shape}: {bad} blocks have a non-finite {name}")
        data = self.format.pack(self.params, self.codes)
        assert data.dtype == torch.uint8 and data.shape == (self.params.n_blocks, self.format.facts.type_size)
        return data.reshape(self.shape[0], -1)

    def to(self, device: torch.device | str) -> "GGUFQuantized":
        return GGUFQuantized(self.qtype, self.shape, self.params.to(device), self.codes.to(device))

    def select_rows(self, index: torch.Tensor) -> "GGUFQuantized":
        """The same tensor with its rows reordered (``index`` of length rows), e.g. llama's Q/K permutation."""
        rows, cols = self.shape
        per_row = cols // self.format.facts.block_size
        blocks = (index[:, None] * per_row + torch.arange(per_row, device=index.device)[None, :]).reshape(-1)  # (rows * per_row,)
        p = self.params

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[blocks]

        blocks = blocks.to(p.d.device)
        params = BlockParams(p.qtype, p.d[blocks], take(p.m), take(p.scales), take(p.mins))
        return GGUFQuantized(self.qtype, (int(index.numel()), cols), params, self.codes[blocks])


def _resolve_mode(mode: SearchMode | str | None, imatrix: torch.Tensor | None) -> SearchMode:
    if mode is None:
        return search_mode(Start.SEARCH, imatrix is not None)
    return SearchMode(mode)


def _check_imatrix(imatrix: torch.Tensor | None, cols: int, name: str) -> torch.Tensor | None:
    if imatrix is None:
        return None
    imatrix = imatrix.detach().float().reshape(-1)
    if imatrix.numel() != cols:
        raise ValueError(f"{name}: imatrix has {imatrix.numel()} entries, the weight has {cols} input columns")
    if not bool(torch.isfinite(imatrix).all()) or bool((imatrix < 0).any()):
        raise ValueError(f"{name}: imatrix must be finite and non-negative (mean squared activations)")
    return imatrix


def quantize_tensor(
    w: torch.Tensor,
    qtype: GGMLType | str,
    imatrix: torch.Tensor | None = None,
    mode: SearchMode | str | None = None,
    name: str = "tensor",
) -> GGUFQuantized:
    """Search block parameters and round ``w`` (rows, cols) to ``qtype``.

    ``mode`` defaults to ``IMATRIX`` when an imatrix is given, else ``REF`` (llama.cpp's own
    quantizer without an imatrix). ``RTN`` is plain min/max rounding (``disable_opt_rtn``).
    """
    fmt = _block_format(qtype)
    check_shape(tuple(w.shape), fmt.facts.qtype, name)
    mode = _resolve_mode(mode, imatrix)
    rows, cols = w.shape
    imatrix = _check_imatrix(imatrix, cols, name)
    w = w.detach().float()
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name}: the weight has {int((~torch.isfinite(w)).sum())} non-finite values")
    step = max(1, ROW_CHUNK_ELEMENTS // cols)
    parts = [fmt.search(w[r : r + step], imatrix, mode) for r in range(0, rows, step)]
    params = _cat_params([p for p, _ in parts])
    codes = torch.cat([c for _, c in parts], dim=0)
    return GGUFQuantized(fmt.facts.qtype, (rows, cols), params, codes)


def _cat_params(parts: list[BlockParams]) -> BlockParams:
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> torch.Tensor | None:
        ts = [getattr(p, name) for p in parts]
        return None if ts[0] is None else torch.cat(ts, dim=0)

    return BlockParams(parts[0].qtype, cat("d"), cat("m"), cat("scales"), cat("mins"))


def requantize(w: torch.Tensor, q: GGUFQuantized, v: torch.Tensor | None = None) -> GGUFQuantized:
    """New codes ``round(w / s + v)`` for ``w`` (rows, cols) with the parameters of ``q`` held fixed.

    ``v`` (rows, cols) is the SignRound rounding offset (None: plain rounding). Groups whose scale
    is 0 keep the codes of ``q``.
    """
    fmt = q.format
    if tuple(w.shape) != q.shape or (v is not None and tuple(v.shape) != q.shape):
        raise ValueError(f"w {tuple(w.shape)} and v {None if v is None else tuple(v.shape)} must match {q.shape}")
    bs = fmt.facts.block_size
    vb = None if v is None else v.detach().reshape(-1, bs)  # (n_blocks, block_size)
    codes = fmt.round_codes(w.detach().reshape(-1, bs), q.params, vb, fallback=q.codes)  # (n_blocks, block_size)
    return GGUFQuantized(q.qtype, q.shape, q.params, codes)


def fake_quantize(
    w: torch.Tensor, params: BlockParams, qtype: GGMLType | str, v: torch.Tensor | None = None
) -> torch.Tensor:
    """(rows, cols) dequantized weight as a differentiable function of ``v`` (straight-through rounding)."""
    fmt = _block_format(qtype)
    bs = fmt.facts.block_size
    out = fmt.fake_quant(w.reshape(-1, bs), params, None if v is None else v.reshape(-1, bs))  # (n_blocks, block_size)
    return out.reshape(w.shape)  # (rows, cols)


def dequantize_tensor(q: GGUFQuantized) -> torch.Tensor:
    return q.dequantize()


def encode_tensor(
    w: torch.Tensor,
    qtype: GGMLType | str,
    imatrix: torch.Tensor | None = None,
    mode: SearchMode | str | None = None,
    name: str = "tensor",
) -> torch.Tensor:
    """Any ggml type (float or quantized): (rows, cols) -> (rows, row_bytes) uint8."""
    fmt = format_of(qtype)
    if issubclass(fmt, FloatFormat):
        return fmt.encode(w)
    return quantize_tensor(w, qtype, imatrix, mode, name).to_bytes()


def unpack_tensor(data: torch.Tensor, qtype: GGMLType | str, shape: tuple[int, int]) -> GGUFQuantized:
    """(rows, row_bytes) or (n_blocks, type_size) uint8 ggml blocks -> ``GGUFQuantized``."""
    fmt = _block_format(qtype)
    params, codes = fmt.unpack(data.reshape(-1, fmt.facts.type_size))
    return GGUFQuantized(fmt.facts.qtype, (int(shape[0]), int(shape[1])), params, codes.to(torch.uint8))


def decode_tensor(data: torch.Tensor, qtype: GGMLType | str, shape: tuple[int, int]) -> torch.Tensor:
    """Any ggml type: (rows, row_bytes) uint8 -> (rows, cols) float32."""
    fmt = format_of(parse_type(qtype))
    if issubclass(fmt, FloatFormat):
        return fmt.decode(data.reshape(shape[0], -1))
    return unpack_tensor(data, qtype, shape).dequantize()
