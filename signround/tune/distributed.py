"""Data-parallel tuning over torch.distributed: each rank holds the current block and 1/N of the rows.

``DataParallel`` is a plain value (rank, world size, the device collectives run on) passed down the
block loop inside ``RuntimeOptions``; with a world size of 1 every method is a no-op and nothing is
communicated. With N ranks (``torchrun --nproc_per_node N -m signround ...``, or the API inside an
initialised process group):

- the calibration rows are identical on every rank (checked) and each rank keeps a contiguous 1/N of
  them (``shard``); the forward-only passes and the next block's inputs stay on that shard;
- every rank draws the same global batch of row indices (same seeded sampler) and runs the rows of
  it that it holds (``local_rows``); each rank's loss is weighted by its share of the batch's valid
  tokens (``batch_shares``), so the summed gradient (``all_reduce_grads``) is the 1-process gradient
  up to the order of float additions;
- held-out losses are reduced as sum(loss x valid tokens) and token counts (``reduce_loss``), and
  importance matrices as sums and counts (``reduce_imatrix``), so every rank starts from the same
  point, takes the same steps and keeps the same best iteration.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

__all__ = ["DataParallel", "SINGLE_PROCESS"]

logger = logging.getLogger(__name__)


def _dist():
    import torch.distributed as dist

    return dist


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run (the default process group); world 1 = no-op."""

    rank: int = 0
    world_size: int = 1
    comm_device: str = "cpu"  # where collective tensors live: cpu for gloo, this rank's GPU for nccl

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world_size}")

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- set-up ---------------------------------------------------------------------------------
    @classmethod
    def from_environment(cls, device: str = "cpu") -> "DataParallel":
        """The running process group's ranks; one is initialised from torchrun's environment when
        ``WORLD_SIZE`` > 1 and none exists (nccl for a CUDA device, else gloo). Otherwise a single process."""
        dist = _dist()
        if not dist.is_available():
            return SINGLE_PROCESS
        if not dist.is_initialized():
            if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
                return SINGLE_PROCESS
            cuda = torch.device(device).type == "cuda"
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo")
            logger.info("data parallel: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(),
                        dist.get_backend())
        world = dist.get_world_size()
        if world <= 1:
            return SINGLE_PROCESS
        comm = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
        return cls(rank=dist.get_rank(), world_size=world, comm_device=comm)

    def device_for(self, device: str) -> str:
        """A bare ``cuda`` means this rank's GPU (torchrun's LOCAL_RANK) when data parallel."""
        if self.active and device == "cuda":
            return f"cuda:{torch.cuda.current_device()}"
        return device

    # -- rows -----------------------------------------------------------------------------------
    def shard_range(self, n: int) -> tuple[int, int]:
        """The contiguous rows [start, stop) of ``n`` that this rank holds (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def shard(self, t: torch.Tensor | None, n: int | None = None) -> torch.Tensor | None:
        """This rank's rows of ``t`` (first dimension)."""
        if t is None or not self.active:
            return t
        start, stop = self.shard_range(t.shape[0] if n is None else n)
        return t[start:stop]

    def local_rows(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """The global row indices ``idx`` (of ``n`` rows) that this rank holds, as indices into its shard."""
        if not self.active:
            return idx
        start, stop = self.shard_range(n)
        return idx[(idx >= start) & (idx < stop)] - start

    # -- collectives ----------------------------------------------------------------------------
    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        out = t.to(self.comm_device)
        _dist().all_reduce(out)
        return out.to(t.device)

    def check_identical(self, t: torch.Tensor, what: str) -> None:
        """Fail unless ``t`` is the same on every rank (a weighted checksum, compared by min and max)."""
        if not self.active:
            return
        flat = t.detach().flatten().to(torch.float64).cpu()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder_(9973)
        fp = torch.tensor([float(flat.numel()), float((flat * weights).sum())], dtype=torch.float64)
        hi, lo = fp.to(self.comm_device), (-fp).to(self.comm_device)
        dist = _dist()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MAX)
        if not torch.equal(hi.cpu(), -lo.cpu()):
            raise RuntimeError(f"the {what} differ between ranks; every rank must build the same rows (same data "
                               f"and seed) before they are split")

    def batch_shares(self, weights: list[float]) -> list[float]:
        """Each local weight (valid tokens of this rank's part of a batch) over the batch's total on all ranks."""
        if not self.active:
            return [1.0] * len(weights)
        total = self._sum(torch.tensor(weights, dtype=torch.float64)).tolist()
        return [w / t if t > 0 else 0.0 for w, t in zip(weights, total)]

    def all_reduce_grads(self, tensors: list[torch.Tensor]) -> None:
        """Sum the gradients of ``tensors`` over the ranks (each rank's loss is already weighted by its share
        of the batch, so the sum is the row-weighted average); a missing gradient counts as zero."""
        if not self.active or not tensors:
            return
        flat = torch.cat([(t.grad if t.grad is not None else torch.zeros_like(t)).detach().flatten().float()
                          for t in tensors])
        flat = self._sum(flat)
        pos = 0
        for t in tensors:
            g = flat[pos:pos + t.numel()].view_as(t).to(device=t.device, dtype=t.dtype)
            pos += t.numel()
            t.grad = g.clone()

    def reduce_loss(self, total: float, count: float) -> float:
        """The mean loss over every rank's held-out rows, from each rank's sum(loss x tokens) and token count."""
        if self.active:
            total, count = self._sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
        return total / max(count, 1)

    def reduce_imatrix(self, sums: dict[str, torch.Tensor], counts: dict[str, float], names: list[str]) -> None:
        """Sum the per-column sums of x² and the token counts of ``names`` over the ranks, in place
        (a module that saw no input on some rank, e.g. an unused expert, counts zero there)."""
        if not self.active or not names:
            return
        sizes = torch.tensor([sums[n].numel() if n in sums else 0 for n in names], dtype=torch.float64)
        hi = sizes.to(self.comm_device)
        dist = _dist()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        sizes_all = [int(s) for s in hi.cpu().tolist()]
        parts = []
        for n, size in zip(names, sizes_all):
            parts.append(sums[n].double().flatten() if n in sums else torch.zeros(size, dtype=torch.float64))
            parts.append(torch.tensor([float(counts.get(n, 0.0))], dtype=torch.float64))
        flat = self._sum(torch.cat(parts))
        pos = 0
        for n, size in zip(names, sizes_all):
            if size:
                sums[n] = flat[pos:pos + size].float()
                counts[n] = float(flat[pos + size])
            pos += size + 1

    def reduce_max(self, value: torch.Tensor) -> torch.Tensor:
        """The largest of every rank's 0-d ``value`` (a calibrated activation maximum)."""
        if not self.active:
            return value
        t = value.detach().double().reshape(1).to(self.comm_device)
        dist = _dist()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.cpu().float().reshape(())

    def reduce_min(self, value: int) -> int:
        """The smallest of every rank's ``value`` (the last block every rank has checkpointed)."""
        if not self.active:
            return value
        t = torch.tensor([-value], dtype=torch.float64, device=self.comm_device)
        dist = _dist()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(-t.item())

    def from_main(self, value: "str | None") -> "str | None":
        """Rank 0's ``value`` on every rank (rank 0 decides, e.g. whether a work directory may be used)."""
        if not self.active:
            return value
        box = [value]
        _dist().broadcast_object_list(box, src=0, device=torch.device(self.comm_device))
        return box[0]

    def barrier(self) -> None:
        if self.active:
            _dist().barrier()


SINGLE_PROCESS = DataParallel()
