"""FP8 E4M3 with an fp32 scale per tensor, channel, group or 2-D block, and the block layout every FP scheme uses.

AutoRound reference §4.3 (``fp8_sym``, ``block_fp8``): ``scale = max|x| * range / 448`` (at least
``1 / (448 * 512)``), elements ``e4m3(x / scale + v)`` (saturating), dequantized ``e4m3 * scale``.

Blocks: a weight (out, in) is cut into ``rows x cols`` blocks (``block_shape``): per tensor one
(out x in) block, per channel (1 x in), groups (1 x group_size), FP8_BLOCK (128 x 128). The last
blocks of each dimension may be partial; they are zero-padded, which changes no block maximum.
``to_blocks`` lays every block out as one row of ``rows * cols`` values, so every per-block numeric
works on (n_blocks, block_numel) tensors, as ``quant/grouping.py`` does for 1-D groups.
"""

from __future__ import annotations

import torch

from .fp import E4M3, round_element, ste

__all__ = ["FP8_SCALE_MIN", "block_shape", "n_blocks", "to_blocks", "from_blocks", "fp8_scale", "fp8_quantize"]

FP8_SCALE_MIN = 1.0 / (448.0 * 512.0)


def block_shape(group_size: int, group_rows: int, shape: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of one block of a (out, in) weight: 0 = per tensor, -1 = per channel, g > 0 = groups."""
    out_f, in_f = shape
    if group_size == 0:
        return out_f, in_f
    if group_size == -1:
        return 1, in_f
    return group_rows, group_size


def n_blocks(block: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int]:
    return -(-shape[0] // block[0]), -(-shape[1] // block[1])


def to_blocks(w: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """(out, in) -> (n_row_blocks * n_col_blocks, rows * cols), zero-padded, blocks in row-major order."""
    rows, cols = block
    nr, nc = n_blocks(block, tuple(w.shape))
    pad_r, pad_c = nr * rows - w.shape[0], nc * cols - w.shape[1]
    if pad_r or pad_c:
        w = torch.nn.functional.pad(w, (0, pad_c, 0, pad_r))
    if rows == 1:
        return w.reshape(nr * nc, cols)
    return w.reshape(nr, rows, nc, cols).transpose(1, 2).reshape(nr * nc, rows * cols)  # (nr, nc, rows, cols)


def from_blocks(b: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """The inverse of ``to_blocks``: (n_blocks, rows * cols) -> (out, in), padding dropped."""
    rows, cols = block
    nr, nc = n_blocks(block, shape)
    if rows == 1:
        w = b.reshape(nr, nc * cols)
    else:
        w = b.reshape(nr, nc, rows, cols).transpose(1, 2).reshape(nr * rows, nc * cols)  # (nr, rows, nc, cols)
    return w[: shape[0], : shape[1]]


def fp8_scale(amax: torch.Tensor, rng: torch.Tensor | None = None) -> torch.Tensor:
    """``max(amax * range / 448, 1 / (448 * 512))`` per block (fp32)."""
    m = amax if rng is None else amax * rng
    return (m / E4M3.max_value).clamp(min=FP8_SCALE_MIN)


def fp8_quantize(
    xg: torch.Tensor,
    rng: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    amax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quant-dequant of blocks ``xg`` (n, k): returns (x_hat, E4M3 values, scale (n, 1)).

    ``amax`` (broadcastable to (n, 1)) replaces the blocks' own max: a static, calibrated scale.
    """
    if amax is None:
        amax = xg.detach().abs().amax(dim=1, keepdim=True)  # (n, 1)
    scale = fp8_scale(amax, rng)
    y = xg / scale if v is None else xg / scale + v
    y = y.clamp(-E4M3.max_value, E4M3.max_value)
    e = ste(y, round_element(y.detach(), E4M3))
    return e * scale, e, scale
