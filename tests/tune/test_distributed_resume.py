"""Resume under data parallel: a 2-rank CLI run killed (SIGKILL, every process) after block 0 is checkpointed
continues to the bytes of an uninterrupted 2-rank run; another world size refuses the checkpoint and leaves it."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signround.cli import main

# 2 processes started as torchrun would (env:// rendezvous), each running the CLI; "slow": block 1 waits, so the
# test can kill the run once block 0 is recorded.
_DP_CLI = """
import os, sys, time
import torch.multiprocessing as mp


def worker(rank, world, port, slow, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    import torch
    torch.set_num_threads(1)
    if slow:
        import signround.tune.driver as driver
        orig = driver._quantize_block

        def _slow(i, *a, **k):
            if i == 1:
                time.sleep(300)
            return orig(i, *a, **k)

        driver._quantize_block = _slow
    from signround.cli import main
    rc = main(args)
    if rc:
        sys.exit(rc)


if __name__ == "__main__":
    mp.spawn(worker, args=(2, int(sys.argv[1]), sys.argv[2] == "slow", sys.argv[3:]), nprocs=2, join=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(model: Path, out: Path) -> list[str]:
    return ["--model", str(model), "--iters", "3", "--nsamples", "8", "--seqlen", "32", "--batch_size", "2",
            "--output_dir", str(out), "-q"]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _work_dirs(out: Path) -> list[Path]:
    return sorted(out.glob(".*.work")) if out.is_dir() else []


def _start(script: Path, model: Path, out: Path, slow: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(script), str(_free_port()), "slow" if slow else "-",
                             *_args(model, out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group: the kill reaches both ranks


def _run(script: Path, model: Path, out: Path) -> str:
    proc = _start(script, model, out, slow=False)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    return err.decode()


def _recorded(work: Path) -> bool:
    return {"block-00000.pt", "chain-00001.rank0.pt", "chain-00001.rank1.pt"} <= {p.name for p in work.iterdir()}


@pytest.mark.slow  # four 2-rank CLI runs (about 35 s each on 2 busy cores)
def test_killed_two_rank_run_resumes_to_the_same_bytes(tiny_model_dir, tmp_path, capsys):
    script = tmp_path / "dp_cli.py"
    script.write_text(_DP_CLI)
    out = tmp_path / "killed"
    proc = _start(script, tiny_model_dir, out, slow=True)
    try:
        deadline = time.time() + 300
        while not any(_recorded(w) for w in _work_dirs(out)):
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before block 0 was checkpointed: "
                            f"{proc.stderr.read().decode()[-3000:]}")
            if time.time() > deadline:
                pytest.fail("block 0 was not checkpointed within 300 s")
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started: the launcher and both ranks
        proc.wait()
    (work,) = _work_dirs(out)
    names = {p.name for p in work.iterdir()}
    assert "block-00001.pt" not in names and not any(n.startswith("chain-") and ".rank" not in n for n in names)

    # One process (another world size) refuses the checkpoint, says why, and leaves it as it was.
    before = _digests(work)
    assert main(_args(tiny_model_dir, out)) == 2
    err = capsys.readouterr().err
    assert "a run of 2 process(es), this run has 1" in err and "--nproc_per_node 2" in err, err
    assert _digests(work) == before

    # The same 2-rank command continues from block 1 (the second) and removes the work directory.
    err = _run(script, tiny_model_dir, out)
    assert err.count("resuming from block 2 of 2") == 1, err[-3000:]  # rank 0 only
    assert _work_dirs(out) == []

    fresh = tmp_path / "fresh"
    _run(script, tiny_model_dir, fresh)
    got, want = _digests(out), _digests(fresh)
    assert got == want and any(name.endswith(".safetensors") for name in want)


def test_another_world_size_refuses_the_directory(tmp_path):
    """Unit level: the fingerprint's world size is compared first, with a message saying what to do."""
    from signround.errors import BadInputError
    from signround.tune.resume import open_work_dir, run_fingerprint

    two = run_fingerprint({"iters": 3}, {}, "tiny", None, None, world_size=2)
    work, done = open_work_dir(tmp_path / ".out.work", two, require=False)
    assert done == 0 and work.path.is_dir()
    (work.path / "owner").write_text("999999999\n")  # the killed run's pid, no longer alive
    for world in (1, 4):
        with pytest.raises(BadInputError, match=rf"a run of 2 process\(es\), this run has {world}: .*"
                                                r"--nproc_per_node 2"):
            open_work_dir(tmp_path / ".out.work", run_fingerprint({"iters": 3}, {}, "tiny", None, None, world), False)
    assert open_work_dir(tmp_path / ".out.work", two, require=False)[1] == 0


def test_each_rank_counts_its_own_chain_files(tmp_path):
    """Rank 0 counts a chain file only with the block files before it; another rank only its own chain files."""
    from signround.tune.distributed import DataParallel
    from signround.tune.resume import _finished

    for name in ("block-00000.pt", "chain-00001.rank0.pt", "chain-00002.rank0.pt", "chain-00001.rank1.pt",
                 "chain-00003.pt"):
        (tmp_path / name).write_bytes(b"")
    rank0, rank1 = DataParallel(0, 2), DataParallel(1, 2)
    assert _finished(tmp_path, rank0) == 1  # chain 2 without block-00001: block 1 not recorded
    assert _finished(tmp_path, rank1) == 1
    (tmp_path / "block-00001.pt").write_bytes(b"")
    assert _finished(tmp_path, rank0) == 2 and _finished(tmp_path, rank1) == 1  # they agree on min = 1
    assert _finished(tmp_path) == 0  # one process: chain-00003.pt lacks block-00002
