"""Data-parallel tuning (``tune/distributed.py``): 2 gloo processes on CPU agree with 1 process.

Each test spawns 2 processes (1 thread each) joined by a gloo process group on a free localhost port.
2 ranks sum their gradients and held-out losses in a different order than 1 process adds them, so a
rounding offset sitting on a rounding boundary may land on the other side: we allow fewer than 0.5% of
the integer codes to differ, and held-out losses within 1%. The ranks themselves must agree exactly.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from signround.method import Start
from signround.model.arch import arch_facts
from signround.plan import build_plan
from signround.schemes import resolve_scheme
from signround.testing import tiny_model
from signround.tune.distributed import SINGLE_PROCESS, DataParallel
from signround.tune.driver import RuntimeOptions, quantize_model
from signround.tune.signround import SignRoundConfig

MAX_CODE_MISMATCH = 0.005  # fraction of integer codes allowed to differ between 2 processes and 1
LOSS_RTOL = 0.01


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    """16 rows x 32 tokens; some rows end in padding, so ranks hold unequal shares of the valid tokens."""
    ids = torch.randint(0, 512, (16, 32), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    for row, valid in ((1, 20), (6, 9), (11, 25), (14, 4)):
        mask[row, valid:] = 0
    return ids, mask


def _quantize(parallel: DataParallel) -> dict:
    ids, mask = _rows()
    model = tiny_model("llama")
    arch = arch_facts(model)
    plan = build_plan(model, arch, resolve_scheme("W4A16"))
    cfg = SignRoundConfig(iters=6, batch_size=4, gradient_accumulate_steps=2, eval_every=2)
    result = quantize_model(model, arch, plan, ids, mask, cfg, start=Start.SEARCH,
                            runtime=RuntimeOptions(show_progress=False, parallel=parallel))
    return {"codes": {n: qw.codes for n, qw in result.weights.items()},
            "losses": {i: (b["loss_before"], b["loss_after"], b["best_iter"]) for i, b in result.blocks.items()}}


def _join(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def _tune_worker(rank: int, world: int, port: int, out: str) -> None:
    _join(rank, world, port)
    try:
        torch.save(_quantize(DataParallel.from_environment("cpu")), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_codes_of_one(tmp_path):
    out = str(tmp_path / "result")
    mp.spawn(_tune_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    torch.set_num_threads(1)
    single = _quantize(SINGLE_PROCESS)

    # the ranks took the same steps: identical codes and reports
    assert ranks[0]["losses"] == ranks[1]["losses"]
    for name, codes in ranks[0]["codes"].items():
        assert torch.equal(codes, ranks[1]["codes"][name]), name

    # and they are the 1-process run's, up to float reduction order
    assert ranks[0]["codes"].keys() == single["codes"].keys()
    differ = sum(int((c != single["codes"][n]).sum()) for n, c in ranks[0]["codes"].items())
    total = sum(c.numel() for c in single["codes"].values())
    assert differ / total < MAX_CODE_MISMATCH, f"{differ} of {total} codes differ"
    for i, (before, after, _) in single["losses"].items():
        d_before, d_after, _ = ranks[0]["losses"][i]
        assert d_before == pytest.approx(before, rel=LOSS_RTOL), i
        assert d_after == pytest.approx(after, rel=LOSS_RTOL), i


def _save_worker(rank: int, world: int, port: int, model_dir: str, out_dir: str, log: str) -> None:
    import signround.api as api
    from signround import AutoRound

    _join(rank, world, port)
    export = api.open_export

    def logged_export(*args, **kwargs):
        Path(f"{log}.{rank}").write_text("exported")
        return export(*args, **kwargs)

    api.open_export = logged_export
    try:
        ar = AutoRound(model_dir, scheme="W4A16", iters=2, nsamples=4, seqlen=32, batch_size=2, device="cpu",
                       tune_dtype="float32", show_progress=False)
        dirs = ar.quantize_and_save(out_dir)
        Path(f"{log}.dirs.{rank}").write_text(json.dumps([str(d) for d in dirs]))
    finally:
        dist.destroy_process_group()


def test_only_rank_0_writes(tiny_model_dir, tmp_path):
    log, out = str(tmp_path / "log"), tmp_path / "out"
    mp.spawn(_save_worker, args=(2, _free_port(), str(tiny_model_dir), str(out), log), nprocs=2, join=True)
    assert Path(f"{log}.0").exists() and not Path(f"{log}.1").exists()
    dirs = [json.loads(Path(f"{log}.dirs.{r}").read_text()) for r in range(2)]
    assert dirs[0] == dirs[1] and len(dirs[0]) == 1
    written = Path(dirs[0][0])
    assert [p.name for p in out.iterdir()] == [written.name]
    record = json.loads((written / "signround.json").read_text())
    assert record["settings"]["runtime"]["world_size"] == 2


def test_shards_partition_the_rows_and_map_global_indices():
    for n in (2, 7, 16):
        ranks = [DataParallel(r, 3) for r in range(3)] if n >= 3 else [DataParallel(r, 2) for r in range(2)]
        spans = [dp.shard_range(n) for dp in ranks]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1
        idx = torch.randperm(n)
        rows = torch.arange(n)
        held = torch.cat([dp.shard(rows)[dp.local_rows(idx, n)] for dp in ranks])
        assert sorted(held.tolist()) == list(range(n))
    assert SINGLE_PROCESS.shard(rows) is rows and SINGLE_PROCESS.local_rows(idx, n) is idx
