"""Cached activations: RAM and spilled stores read and write the same values; spilling keeps RSS down."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from signround.calib.rowstore import MemoryBudget, from_tensor, row_store
from signround.errors import BadInputError
from signround.sizes import available_memory

SHAPE = (13, 5, 8)
DTYPES = [torch.float32, torch.bfloat16]


def _pair(tmp_path, dtype):
    """The same random contents in a RAM store and a spilled one."""
    ram = row_store(SHAPE, dtype, MemoryBudget(2**30, tmp_path), "ram")
    disk = row_store(SHAPE, dtype, MemoryBudget(0, tmp_path), "disk")
    assert not ram.spilled and disk.spilled
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    ram[:] = x
    disk[:] = x
    return ram, disk


@pytest.mark.parametrize("dtype", DTYPES)
def test_disk_reads_what_ram_reads(tmp_path, dtype):
    ram, disk = _pair(tmp_path, dtype)
    g = torch.Generator().manual_seed(1)
    reads = [slice(None), slice(0, 4), slice(4, 8), slice(8, 12), slice(12, 16), slice(20, 30), slice(1, 12, 3),
             slice(-5, None), 3, -1,
             torch.tensor([], dtype=torch.long), torch.tensor([7]), torch.tensor([2, 3, 4, 5]),
             torch.tensor([5, 4, 3]), torch.tensor([1, 1, 1, 0]), torch.tensor([-1, 0, -13]),
             torch.tensor([[0, 1], [5, 9]]), torch.arange(13) % 2 == 0, [4, 2, 3]]
    reads += [torch.randint(0, 13, (k,), generator=g) for k in (1, 4, 8, 13, 30)]
    reads += [torch.randperm(13, generator=g)[:6] for _ in range(5)]
    for rows in reads:
        a, b = ram[rows], disk[rows]
        assert a.dtype == b.dtype == dtype and a.shape == b.shape, rows
        assert torch.equal(a, b), rows
    assert torch.equal(ram.tensor(), disk.tensor())


@pytest.mark.parametrize("dtype", DTYPES)
def test_disk_writes_what_ram_writes(tmp_path, dtype):
    ram, disk = _pair(tmp_path, dtype)
    g = torch.Generator().manual_seed(2)
    writes = [slice(0, 4), slice(10, 20), slice(3, 4), 6, torch.tensor([9, 2, 11]), torch.tensor([0, 1, 2])]
    for rows in writes:
        n = len(range(13)[rows]) if isinstance(rows, slice) else 1 if isinstance(rows, int) else len(rows)
        value = torch.randn((n, *SHAPE[1:]), generator=g, dtype=torch.float64)  # cast to the store's dtype
        if isinstance(rows, int):
            value = value[0]
        ram[rows] = value.to(dtype)
        disk[rows] = value
        assert torch.equal(ram.tensor(), disk.tensor()), rows
    ram[5:7] = 1.5  # broadcast, as with a tensor
    disk[5:7] = torch.tensor(1.5)
    assert torch.equal(ram.tensor(), disk.tensor())


def test_ram_store_is_the_tensor(tmp_path):
    t = torch.randn(SHAPE)
    store = from_tensor(t, MemoryBudget(2**30, tmp_path), "fp")
    assert not store.spilled and store.tensor() is t and store.device == t.device
    assert store[2:5].data_ptr() == t[2:5].data_ptr()  # a view, as indexing the tensor gives
    rows = torch.tensor([3, 1, 1])
    assert torch.equal(store[rows], t[rows])
    assert store.shape == SHAPE and len(store) == 13 and store.nbytes == t.numel() * 4


def test_from_tensor_spills_and_clone_follows_the_budget(tmp_path, caplog):
    t = torch.randn(SHAPE, dtype=torch.bfloat16)
    budget = MemoryBudget(t.numel() * 2, tmp_path)
    ram = from_tensor(t, budget, "fp")
    assert not ram.spilled and budget.used == ram.nbytes
    with caplog.at_level(logging.INFO, logger="signround"):
        clone = ram.clone("q")  # the budget is full: the clone goes to disk
    assert clone.spilled and torch.equal(clone.tensor(), t) and budget.used == ram.nbytes
    spilled = from_tensor(t, budget, "targets")
    assert spilled.spilled and torch.equal(spilled.tensor(), t)
    empty = spilled.empty_like("next")
    assert empty.spilled and empty.shape == SHAPE and empty.dtype == torch.bfloat16
    assert torch.equal(empty.tensor(), torch.zeros(SHAPE, dtype=torch.bfloat16))  # unwritten rows read as zeros
    ram.close()
    assert budget.used == 0
    again = clone.clone("back")  # room again: RAM, same values
    assert not again.spilled and torch.equal(again.tensor(), t)


def test_small_budget_spills_and_logs(tmp_path, caplog):
    budget = MemoryBudget(1000, tmp_path / "spill" / "deeper", used=400)
    with caplog.at_level(logging.INFO, logger="signround"):
        store = row_store((4, 100, 2), torch.float32, budget, "targets")
    assert store.spilled and budget.used == 400
    path = Path(store.path)
    assert path.parent == (tmp_path / "spill" / "deeper").resolve() and path.name.startswith(".")
    assert path.stat().st_size == store.nbytes == 3200 and (path.stat().st_mode & 0o777) == 0o600
    [line] = [r.getMessage() for r in caplog.records if "targets" in r.getMessage()]
    assert line == f"calibration activations 'targets' (3.1 KiB): disk, {path} (budget 1000 B, 400 B used)"
    with caplog.at_level(logging.INFO, logger="signround"):
        small = row_store((1, 75, 2), torch.float32, budget, "small")
    assert "calibration activations 'small' (600 B): RAM, cpu (budget 1000 B, 400 B used)" in caplog.text
    assert not small.spilled and budget.used == 1000


def test_close_removes_the_file_also_on_gc(tmp_path):
    budget = MemoryBudget(0, tmp_path)
    store = row_store(SHAPE, torch.float32, budget, "fp")
    path = store.path
    store[0:2] = torch.ones(2, *SHAPE[1:])
    store.close()
    assert not path.exists()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="'fp' were used after close"):
        store[0:1]
    other = row_store(SHAPE, torch.float32, budget, "q")
    path = other.path
    del other
    gc.collect()
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_ram_close_gives_the_budget_back(tmp_path):
    budget = MemoryBudget(2**20, tmp_path)
    store = row_store(SHAPE, torch.float32, budget, "fp")
    assert budget.used == store.nbytes
    store.close()
    store.close()
    assert budget.used == 0
    with pytest.raises(RuntimeError, match="used after close"):
        store[0:1]
    row_store(SHAPE, torch.float32, budget, "q")  # dropped at once
    gc.collect()
    assert budget.used == 0


def test_out_of_range_rows_fail_like_a_tensor(tmp_path):
    ram, disk = _pair(tmp_path, torch.float32)
    for rows in (13, -14, torch.tensor([0, 13]), torch.tensor([-14])):
        with pytest.raises(IndexError):
            ram[rows]
        with pytest.raises(IndexError):
            disk[rows]


def test_unusable_spill_dir_names_it(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(BadInputError, match="a-file"):
        row_store(SHAPE, torch.float32, MemoryBudget(0, blocker), "fp")
    import signround.calib.rowstore as rowstore

    monkeypatch.setattr(rowstore.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(BadInputError, match=f"spill directory {tmp_path.resolve()} has only 10 B free"):
        row_store(SHAPE, torch.float32, MemoryBudget(0, tmp_path), "fp")
    assert list(tmp_path.iterdir()) == [blocker]


def test_spilling_into_tmpfs_warns(caplog):
    import signround.calib.rowstore as rowstore

    shm = Path("/dev/shm")
    if not shm.is_dir() or not rowstore._on_tmpfs(shm / "x"):
        pytest.skip("no tmpfs at /dev/shm")
    with caplog.at_level(logging.WARNING, logger="signround"):
        store = row_store((2, 2), torch.float32, MemoryBudget(0, shm), "fp")
    store.close()
    assert "is in RAM (tmpfs)" in caplog.text


def test_default_budget_is_half_the_free_ram(tmp_path):
    budget = MemoryBudget.default(tmp_path)
    assert budget.spill_dir == tmp_path and budget.used == 0
    assert abs(budget.limit - available_memory() // 2) < 2**30


_RSS_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from pathlib import Path
    from signround.calib.rowstore import MemoryBudget, row_store
    rows, t, h, batch = 100, 1024, 1024, 5  # 400 MiB of float32, 20 MiB a batch
    x = torch.empty(batch, t, h)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    store = row_store((rows, t, h), torch.float32, MemoryBudget(0, Path(sys.argv[1])), "targets")
    assert store.spilled
    for start in range(0, rows, batch):
        x.copy_(torch.arange(start, start + batch, dtype=torch.float32).view(-1, 1, 1).expand_as(x))
        store[start:start + batch] = x
        del x; x = torch.empty(batch, t, h)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        idx = torch.randint(0, rows, (batch,), generator=g)
        got = store[idx]
        assert torch.equal(got[:, -1, -1], idx.float()) and torch.equal(got[:, 0, 0], idx.float())
        del got
    for start in range(0, rows, batch):
        assert torch.equal(store[start:start + batch][:, 7, 9], torch.arange(start, start + batch).float())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    store.close()
    print((peak - base) // 2**20)
""")


@pytest.mark.slow
def test_spilled_store_keeps_rss_below_its_size(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    grown_mib = int(done.stdout.split()[-1])
    assert grown_mib < 150, f"peak RSS grew by {grown_mib} MiB for a 400 MiB spilled store"
    assert list(tmp_path.iterdir()) == []
