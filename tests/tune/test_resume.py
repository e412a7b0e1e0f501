"""Resume after a crash: a run killed (SIGKILL) after its first block continues from its checkpoint and
writes the same bytes as an uninterrupted run; another command refuses the checkpoint and leaves it alone."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signround.cli import main

# Runs the CLI with block 1 delayed, so the test can kill the process once block 0 is checkpointed.
_SLOW_CLI = """
import sys, time
import signround.tune.driver as driver

_orig = driver._quantize_block

def _slow(i, *args, **kwargs):
    if i == 1:
        time.sleep(120)
    return _orig(i, *args, **kwargs)

driver._quantize_block = _slow
from signround.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(model: Path, out: Path, iters: int = 3, extra: tuple[str, ...] = ()) -> list[str]:
    return ["--model", str(model), "--iters", str(iters), "--nsamples", "4", "--seqlen", "32", "--batch_size", "2",
            "--output_dir", str(out), "-q", *extra]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _work_dirs(out: Path) -> list[Path]:
    return sorted(out.glob(".*.work")) if out.is_dir() else []


def _kill_after_block0(model: Path, out: Path, tmp_path: Path, extra: tuple[str, ...] = ()) -> Path:
    script = tmp_path / "slow_cli.py"
    script.write_text(_SLOW_CLI)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(script), *_args(model, out, extra=extra)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not any((w / "chain-00001.pt").is_file() for w in _work_dirs(out)):
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before block 0 was checkpointed: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                pytest.fail("block 0 was not checkpointed within 300 s")
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (work,) = _work_dirs(out)
    return work


# NVFP4 in llm_compressor: the calibrated static input maxima of the blocks done before the kill must come back
# from the checkpoint too (they are written as input_global_scale).
@pytest.mark.parametrize("extra, name", [((), "tiny-w4g128-auto_round"),
                                         (("--scheme", "NVFP4", "--format", "llm_compressor"),
                                          "tiny-nvfp4_a4s-llm_compressor")])
def test_killed_run_resumes_to_the_same_bytes(extra, name, tiny_model_dir, tmp_path, caplog, capsys):
    out = tmp_path / "killed"
    work = _kill_after_block0(tiny_model_dir, out, tmp_path, extra)
    # the work directory, and the streamed output being written in its hidden partial directory
    others = [p for p in out.iterdir() if p != work]
    assert all(p.name.startswith(f".{name}.partial-") for p in others), others
    assert {p.name for p in work.iterdir()} >= {"fingerprint.json", "block-00000.pt", "chain-00001.pt"}
    assert not (work / "block-00001.pt").exists()

    # Another command (other iters) refuses the checkpoint, says why, and leaves it as it was.
    before = _digests(work)
    assert main(_args(tiny_model_dir, out, iters=2, extra=extra)) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "iters: 3 then, 2 now" in err, err
    assert _digests(work) == before and [p for p in out.iterdir() if p != work] == others

    # The same command continues from block 1 (the second block) and removes the work directory.
    with caplog.at_level(logging.WARNING, logger="signround"):
        assert main(_args(tiny_model_dir, out, extra=extra)) == 0
    assert "resuming from block 2 of 2" in caplog.text
    assert _work_dirs(out) == []

    fresh = tmp_path / "fresh"
    assert main(_args(tiny_model_dir, fresh, extra=extra)) == 0
    assert _work_dirs(fresh) == []
    got, want = _digests(out), _digests(fresh)
    assert got == want and any(name.endswith(".safetensors") for name in want)


def test_resume_without_a_checkpoint_fails_clearly(tiny_model_dir, tmp_path, capsys):
    from signround import AutoRound
    from signround.errors import BadInputError

    out = tmp_path / "out"
    assert main([*_args(tiny_model_dir, out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "resume: nothing to resume" in err, err
    assert _work_dirs(out) == [] and not any(out.iterdir() if out.is_dir() else [])
    with pytest.raises(BadInputError, match="nothing to resume"):  # the API, past the CLI's pre-load check
        AutoRound(str(tiny_model_dir), iters=1, nsamples=2, seqlen=16, resume=True).quantize_and_save(out)
    assert _work_dirs(out) == []


def test_driver_restores_finished_blocks_into_the_model(tiny, calib_ids, tmp_path, monkeypatch):
    """In process: a loop interrupted after block 0 and resumed gives the uninterrupted codes, reports and weights."""
    import torch

    from signround.method import Start
    from signround.model.arch import arch_facts
    from signround.plan import build_plan
    from signround.schemes import resolve_scheme
    from signround.tune import driver
    from signround.tune.driver import RuntimeOptions, quantize_model
    from signround.tune.resume import open_work_dir, run_fingerprint
    from signround.tune.signround import SignRoundConfig

    def run(model, work=None):
        arch = arch_facts(model)
        plan = build_plan(model, arch, resolve_scheme("W4A16"), quant_lm_head=True)
        return quantize_model(model, arch, plan, calib_ids, None, SignRoundConfig(iters=2, batch_size=4),
                              start=Start.SEARCH, runtime=RuntimeOptions(show_progress=False), work=work)

    torch.manual_seed(0)
    want_model = tiny("llama")
    want = run(want_model)

    fingerprint = run_fingerprint({"iters": 2}, {}, "tiny", calib_ids, None)
    work, done = open_work_dir(tmp_path / ".out.work", fingerprint, require=False)
    assert done == 0
    orig = driver._quantize_block

    def crash_at_block1(i, *args, **kwargs):
        if i == 1:
            raise KeyboardInterrupt
        return orig(i, *args, **kwargs)

    torch.manual_seed(0)
    with monkeypatch.context() as m:
        m.setattr(driver, "_quantize_block", crash_at_block1)
        with pytest.raises(KeyboardInterrupt):
            run(tiny("llama"), work)
    work, done = open_work_dir(tmp_path / ".out.work", fingerprint, require=True)
    assert done == 1
    torch.manual_seed(0)
    got_model = tiny("llama")
    got = run(got_model, work)
    assert list(got.weights) == list(want.weights) and list(got.imatrix) == list(want.imatrix)
    for name, qw in want.weights.items():
        assert torch.equal(got.weights[name].codes, qw.codes) and torch.equal(got.weights[name].scale, qw.scale)
    assert got.layers == want.layers
    assert [{k: v for k, v in b.items() if k not in ("seconds", "phase_seconds")} for b in got.blocks.values()] == \
        [{k: v for k, v in b.items() if k not in ("seconds", "phase_seconds")} for b in want.blocks.values()]
    got_sd, want_sd = got_model.state_dict(), want_model.state_dict()
    assert all(torch.equal(got_sd[k], want_sd[k]) for k in want_sd)


def test_work_dir_refuses_what_it_did_not_make(tmp_path):
    from signround.errors import BadInputError
    from signround.tune.resume import open_work_dir

    foreign = tmp_path / ".out.work"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not left by signround"):
        open_work_dir(foreign, {"run": 1}, require=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_chain_file_counts_only_with_its_blocks(tmp_path):
    """A block is finished only when the next block's inputs are recorded after it (each file renamed into place)."""
    import torch

    from signround.tune.resume import BlockPart, load_progress, open_work_dir, save_block

    work, _ = open_work_dir(tmp_path / ".w", {"run": 1}, require=False)
    save_block(work, 0, BlockPart({}, {}, {"layers": 0}, {}), torch.ones(2), None)
    (work.path / "block-00001.pt").write_bytes(b"")  # block 1 written, its chain file not: block 1 is not finished
    (work.path / ".tmp-1-ab-chain-00002.pt").write_bytes(b"half")  # a write killed before its rename
    progress = load_progress(work)
    assert progress.next_block == 1 and torch.equal(progress.fp, torch.ones(2)) and progress.q is None
    assert list(progress.blocks) == [BlockPart({}, {}, {"layers": 0}, {})]
    _, done = open_work_dir(tmp_path / ".w", {"run": 1}, require=True)
    assert done == 1 and not (work.path / ".tmp-1-ab-chain-00002.pt").exists()


def test_work_dir_in_use_by_a_live_process_is_refused(tmp_path):
    from signround.errors import BadInputError
    from signround.tune.resume import open_work_dir

    work, _ = open_work_dir(tmp_path / ".w", {"run": 1}, require=False)
    (work.path / "owner").write_text(f"{os.getppid()}\n")  # a live process other than this one
    with pytest.raises(BadInputError, match=f"in use by the running process {os.getppid()}"):
        open_work_dir(tmp_path / ".w", {"run": 1}, require=False)
    (work.path / "owner").write_text("999999999\n")  # gone
    assert open_work_dir(tmp_path / ".w", {"run": 1}, require=False)[1] == 0
    assert (work.path / "owner").read_text() == f"{os.getpid()}\n"
