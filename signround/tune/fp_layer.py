"""One Linear being quantized to an FP/MX data type: the ``LayerQuantizer`` for mx_fp, mx_fp_rceil, mx_int, nv_fp, fp.

The weight is cut into blocks (``quant/fp8.block_shape``: 32-groups for MX, 16-groups for NVFP4, a
tensor/channel/group/2-D block for FP8) and every block gets a scale from its max times a **range**
multiplier (AutoRound reference §4):

- RTN (``optimize=False``): range 1.
- optimised RTN (§3.2), scored by the imatrix-weighted squared error of each block (plain squared error
  without an imatrix); range 1 is always a candidate and only a strictly better one replaces it:
  MX tries the shared exponent -1/0/+1 (range 0.5, 1, 2); NVFP4 tries c in {0.50, 0.51, ..., 1.51};
  FP8 has **no** search (range 1): its relative error is nearly the same at every magnitude, and the
  reference has none either.
- SignRound: a rounding offset ``v`` per weight (added to the scaled value before element rounding,
  ``|v| <= V_BOUND``) and, with minmax tuning, a per-block multiplier ``alpha`` in ``RANGE_BOUNDS`` on
  top of the start's range; element rounding, the E8M0 floor/rceil and NVFP4's FP8 scale cast are
  straight-through. ``weight()`` returns exactly ``result().dequantize()``.

NVFP4's per-tensor global scale comes from the weight's max, or from the max over a fused group
(q/k/v, gate/up) when the driver passes ``tensor_amax`` (``shared_amax``): vLLM's fused kernels need
one global scale per fused matrix. Work is done a slice of blocks at a time (``SEARCH_CHUNK``
elements), so an 8B model's lm_head never needs several weight-sized temporaries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..plan import LayerPlan
from ..quant.fp import check_finite, encode_elements
from ..quant.fp8 import block_shape, fp8_quantize, fp8_scale, from_blocks, n_blocks, to_blocks
from ..quant.fp_types import FPQuantized
from ..quant.mx import mx_quantize
from ..quant.nvfp import nv_global_scale, nv_quantize
from ..quant.search import SEARCH_CHUNK, importance_weights
from .layer import RANGE_BOUNDS, V_BOUND, frozen_rows, register_layer_state

__all__ = ["FPLayerState", "make_fp_state", "search_range", "shared_amax", "MX_CANDIDATES", "NV_CANDIDATES"]

logger = logging.getLogger(__name__)

MX_CANDIDATES = (1.0, 0.5, 2.0)  # shared exponent 0, -1, +1 (range 1 first: it wins ties)
NV_CANDIDATES = (1.0, *(k / 100 for k in range(50, 152)))  # c = 0.50 ... 1.51


def _qdq(xg: torch.Tensor, data_type: str, bits: int, rng: torch.Tensor | None, v: torch.Tensor | None,
         global_scale: torch.Tensor | None, amax: torch.Tensor | None = None):
    """(x_hat, element values, scale) of blocks ``xg`` for ``data_type`` (``amax``: FP8's max of a whole block)."""
    if data_type == "nv_fp":
        return nv_quantize(xg, global_scale, rng, v)
    if data_type == "fp":
        return fp8_quantize(xg, rng, v, amax)
    return mx_quantize(xg, data_type, bits, rng, v)


@dataclass
class FPLayerState:
    """An FP/MX layer: frozen blocks of the weight, the start's range per block, and the tunables."""

    plan: LayerPlan
    local_name: str
    wg: torch.Tensor  # (n_blocks, rows * cols) float32, frozen
    block: tuple[int, int]  # (rows, cols) of one block
    init_range: torch.Tensor  # (n_blocks, 1): 1 (RTN) or the search's multiplier
    global_scale: torch.Tensor | None = None  # 0-d float32, nv_fp only
    v: torch.Tensor | None = None  # (n_blocks, rows * cols) rounding offsets
    alpha: torch.Tensor | None = None  # (n_blocks, 1) range multipliers

    @property
    def data_type(self) -> str:
        return self.plan.scheme.data_type

    def enable_tuning(self, minmax: bool, compile: bool = False) -> None:
        # compile: the FP fake quantization always runs eagerly.
        self.v = torch.zeros_like(self.wg, requires_grad=True)
        if minmax:
            self.alpha = torch.ones_like(self.init_range, requires_grad=True)

    def tunables(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([self.v] if self.v is not None else []), ([self.alpha] if self.alpha is not None else [])

    @torch.no_grad()
    def clamp_(self) -> None:
        if self.v is not None:
            self.v.clamp_(-V_BOUND, V_BOUND)
        if self.alpha is not None:
            self.alpha.clamp_(*RANGE_BOUNDS)

    def snapshot(self) -> list[torch.Tensor | None]:
        return [None if t is None else t.detach().clone() for t in (self.v, self.alpha)]

    @torch.no_grad()
    def restore(self, snap: list[torch.Tensor | None]) -> None:
        for t, s in zip((self.v, self.alpha), snap):
            if t is not None and s is not None:
                t.copy_(s)

    def _range(self) -> torch.Tensor:
        return self.init_range if self.alpha is None else self.init_range * self.alpha

    def weight(self) -> torch.Tensor:
        """The fake-quantized weight in the module's layout, differentiable in ``v`` and ``alpha``."""
        x_hat = _qdq(self.wg, self.data_type, self.plan.scheme.bits, self._range(), self.v, self.global_scale)[0]
        w = from_blocks(x_hat, self.block, self.plan.shape)  # (out, in)
        return w.t() if self.plan.conv1d else w

    @torch.no_grad()
    def result(self) -> FPQuantized:
        """Codes and scales of the current tunables, a slice of blocks at a time."""
        scheme, numel = self.plan.scheme, self.wg.shape[1]
        rng = self._range().detach()
        v = None if self.v is None else self.v.detach()
        codes, scales = [], []
        step = max(1, SEARCH_CHUNK // numel)
        for i in range(0, self.wg.shape[0], step):
            sl = slice(i, i + step)
            if numel > SEARCH_CHUNK and self.data_type == "fp":  # one huge FP8 block: its columns in slices
                codes.append(self._fp8_block_codes(i, rng[sl], v))
                scales.append(fp8_scale(_row_abs_max(self.wg[sl]), rng[sl]))
                continue
            _, e, s = _qdq(self.wg[sl], self.data_type, scheme.bits, rng[sl], None if v is None else v[sl],
                           self.global_scale)
            codes.append(encode_elements(e, self.data_type, scheme.bits))
            scales.append(s)
        shape = self.plan.shape
        nr, nc = n_blocks(self.block, shape)
        return FPQuantized(
            codes=from_blocks(torch.cat(codes), self.block, shape).contiguous().cpu(),
            scale=torch.cat(scales).reshape(nr, nc).float().cpu(),
            data_type=self.data_type,
            bits=scheme.bits,
            group_size=self.block[1],
            group_rows=self.block[0],
            global_scale=None if self.global_scale is None else self.global_scale.float().cpu(),
        )

    def _fp8_block_codes(self, i: int, rng: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
        row = self.wg[i:i + 1]  # (1, numel)
        amax = _row_abs_max(row)
        parts = []
        for j in range(0, row.shape[1], SEARCH_CHUNK):
            cols = slice(j, j + SEARCH_CHUNK)
            _, e, _ = fp8_quantize(row[:, cols], rng, None if v is None else v[i:i + 1, cols], amax)
            parts.append(encode_elements(e, "fp", 8))
        return torch.cat(parts, dim=1)


def _row_abs_max(x: torch.Tensor) -> torch.Tensor:
    """(n, 1) max |x| of each row, without an |x| copy of the rows."""
    lo, hi = torch.aminmax(x, dim=1, keepdim=True)
    return torch.maximum(-lo, hi)


def _block_importance(imatrix: torch.Tensor | None, block: tuple[int, int], shape: tuple[int, int],
                      start: int, stop: int) -> torch.Tensor | None:
    """The imatrix laid out like blocks ``start:stop`` of a weight cut into (1, cols) blocks, or None."""
    if imatrix is None:
        return None
    cols = block[1]
    nc = n_blocks(block, shape)[1]
    per_col_block = to_blocks(imatrix.float().reshape(1, -1), (1, cols))  # (nc, cols)
    return per_col_block[torch.arange(start, stop, device=per_col_block.device) % nc]


@torch.no_grad()
def search_range(wg: torch.Tensor, data_type: str, bits: int, block: tuple[int, int], shape: tuple[int, int],
                 imatrix: torch.Tensor | None, global_scale: torch.Tensor | None) -> torch.Tensor:
    """Optimised RTN: the range multiplier of every block with the least (imatrix-)weighted squared error."""
    candidates = {"nv_fp": NV_CANDIDATES, "fp": (1.0,)}.get(data_type, MX_CANDIDATES)
    best = torch.ones(wg.shape[0], 1, dtype=wg.dtype, device=wg.device)
    if len(candidates) == 1:
        return best
    step = max(1, SEARCH_CHUNK // wg.shape[1])
    for i in range(0, wg.shape[0], step):
        x = wg[i:i + step]
        w = importance_weights(x, _block_importance(imatrix, block, shape, i, i + x.shape[0]))
        best_err = torch.full_like(best[i:i + step], float("inf"))
        for c in candidates:
            rng = torch.full_like(best_err, c)
            x_hat = _qdq(x, data_type, bits, rng, None, global_scale)[0]
            err = (w * (x - x_hat) ** 2).sum(dim=1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best[i:i + step] = torch.where(better, rng, best[i:i + step])
    return best


def shared_amax(layers: Mapping[str, tuple[LayerPlan, torch.Tensor]],
                fused_groups: Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
    """local name -> the max |w| over its fused group, for nv_fp layers fused with another nv_fp layer.

    ``layers`` maps a block's local names to (plan, weight); one global scale per fused matrix is what
    vLLM's fused NVFP4 kernels assume (the smallest of the members' own, AutoRound reference §4.2).
    """
    out: dict[str, torch.Tensor] = {}
    for group in fused_groups:
        members = [n for n in group if n in layers and layers[n][0].scheme.data_type == "nv_fp"]
        if len(members) < 2:
            continue
        amax = torch.stack([_abs_max(layers[n][1]) for n in members]).max()
        out.update({n: amax for n in members})
    return out


def _abs_max(w: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.aminmax(w.detach())
    return torch.maximum(-lo, hi).float().cpu()


@register_layer_state("mx_fp")
@register_layer_state("mx_fp_rceil")
@register_layer_state("mx_int")
@register_layer_state("nv_fp")
@register_layer_state("fp")
def make_fp_state(
    plan: LayerPlan,
    local_name: str,
    weight: torch.Tensor,
    imatrix: torch.Tensor | None = None,
    optimize: bool = True,
    tensor_amax: torch.Tensor | None = None,
) -> FPLayerState:
    """Cut ``weight`` (module layout) into blocks and choose each block's starting range (module docstring).

    ``tensor_amax`` (nv_fp): the max |w| the global scale is computed from, when shared with fused layers.
    """
    check_finite(weight, plan.name)
    w = frozen_rows(plan, weight)  # (out, in) float32
    scheme = plan.scheme
    block = block_shape(scheme.group_size, scheme.group_rows, plan.shape)
    wg = to_blocks(w, block)  # (n_blocks, rows * cols)
    global_scale = None
    if scheme.data_type == "nv_fp":
        amax = tensor_amax if tensor_amax is not None else _abs_max(w)
        global_scale = nv_global_scale(amax.to(w.device))
    if optimize:
        im = None if imatrix is None else imatrix.to(w.device)
        init = search_range(wg, scheme.data_type, scheme.bits, block, plan.shape, im, global_scale)
    else:
        init = torch.ones(wg.shape[0], 1, dtype=wg.dtype, device=wg.device)
    return FPLayerState(plan=plan, local_name=local_name, wg=wg, block=block, init_range=init,
                        global_scale=global_scale)
