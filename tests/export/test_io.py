"""The output policy: never replace what signround did not write, nothing half-written, the user's umask."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from signround.errors import OutputPathError
from signround.export import io
from signround.export.io import atomic_output_dir, check_output_target, remove_stale_partials

ROOT = Path(__file__).resolve().parents[2]


def _write_output(target: Path, text: str, overwrite: bool = False) -> None:
    """What every writer does: files into the yielded folder, then the run record."""
    with atomic_output_dir(target, overwrite) as tmp:
        (tmp / "model.txt").write_text(text)
        (tmp / "signround.json").write_text("{}\n")


def _partials(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.partial-*"))


def test_a_regular_file_is_refused_and_unchanged(tmp_path):
    target = tmp_path / "out"
    target.write_text("mine")
    with pytest.raises(OutputPathError, match=str(target)):
        _write_output(target, "new", overwrite=True)
    assert target.read_text() == "mine"
    assert _partials(tmp_path, "out") == []


def test_an_output_under_a_regular_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(OutputPathError, match="is a file"):
        check_output_target(tmp_path / "f" / "sub" / "out")
    assert (tmp_path / "f").read_text() == "mine"


def test_a_foreign_nonempty_directory_is_refused_even_with_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputPathError, match="did not write"):
            _write_output(target, "new", overwrite=overwrite)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "mine"


def test_a_previous_output_is_replaced_only_with_overwrite(tmp_path):
    target = tmp_path / "out"
    _write_output(target, "first")
    (target / "stale.bin").write_text("from the first run")
    with pytest.raises(OutputPathError, match="--overwrite"):
        _write_output(target, "second")
    assert (target / "model.txt").read_text() == "first"
    _write_output(target, "second", overwrite=True)
    assert (target / "model.txt").read_text() == "second"
    assert not (target / "stale.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial, no moved-aside old output


def test_an_empty_directory_is_filled(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    _write_output(target, "x")
    assert (target / "model.txt").read_text() == "x"


def test_an_error_while_writing_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


def test_created_directories_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _write_output(tmp_path / "new" / "out", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o755


def test_an_unwritable_location_fails_before_anything_is_written(tmp_path, monkeypatch):
    def refuse(folder):  # tests run as root, which ignores mode bits: the probe is what decides
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(io, "_probe_writable", refuse)
    ran = []
    with pytest.raises(OutputPathError, match="cannot write in"):
        with atomic_output_dir(tmp_path / "a" / "out"):
            ran.append(True)
    assert ran == [] and list(tmp_path.iterdir()) == []


def test_a_read_only_directory_is_refused_by_the_real_probe(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the monkeypatched probe covers this case")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="cannot write in"):
            check_output_target(parent / "out")
    finally:
        parent.chmod(0o755)


@pytest.fixture
def sleeper():
    procs = []

    def start() -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_stale_partials_of_dead_processes_are_removed_live_ones_kept(tmp_path, sleeper):
    live, dead = sleeper(), sleeper()
    dead.kill()
    dead.wait()
    mine_dead = tmp_path / f".out.partial-{dead.pid}-00ff"
    mine_live = tmp_path / f".out.partial-{live.pid}-00ff"
    other_name = tmp_path / f".other.partial-{dead.pid}-00ff"
    for p in (mine_dead, mine_live, other_name):
        p.mkdir()
        (p / "half.bin").write_text("x")
    _write_output(tmp_path / "out", "x")
    assert not mine_dead.exists()
    assert mine_live.exists() and other_name.exists()
    assert remove_stale_partials(tmp_path / "other") == [other_name]


_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from signround.export.io import atomic_output_dir
    with atomic_output_dir(sys.argv[1]) as tmp:
        (tmp / "model.safetensors").write_bytes(b"0" * 1000)
        print(tmp, flush=True)
        time.sleep(60)
""")


def _start_slow_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    partial = Path(proc.stdout.readline().strip())
    assert partial.is_dir() and partial.name.startswith(".out.partial-"), partial
    return proc, partial


def test_a_killed_export_is_cleaned_up_by_the_next_one(tmp_path):
    proc, partial = _start_slow_writer(tmp_path / "out")
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    assert partial.exists() and not (tmp_path / "out").exists()
    _write_output(tmp_path / "out", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sigterm_during_export_leaves_nothing(tmp_path):
    proc, partial = _start_slow_writer(tmp_path / "out")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_export_model_writes_the_run_record_and_refuses_a_foreign_dir(tiny, calib_ids, tmp_path):
    from signround.export.registry import export_dir_name
    from signround.formats import Format
    from tests.helpers import export_tiny, quantize_tiny

    model = tiny("llama")
    plan, result = quantize_tiny(model, calib_ids, iters=0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(OutputPathError):
        export_tiny(model, plan, result, Format.AUTO_ROUND, foreign)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    out = export_tiny(model, plan, result, Format.AUTO_ROUND, tmp_path / "q")
    assert json.loads((out / "signround.json").read_text())["format"] == "auto_round"
    # the pre-flight knows each format's directory from the scheme alone, before the model loads
    assert export_dir_name("m", plan.default, Format.AUTO_ROUND) == "m-w4g128-auto_round"


def test_a_zombie_is_not_a_running_owner():
    """A killed child nobody has reaped yet (what an orphaned torchrun rank is until init reaps it) holds its pid
    but runs nothing: a partial or work directory it owned must not count as in use."""
    import time

    from signround.export.io import _pid_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _pid_alive(child.pid)
        child.kill()
        deadline = time.time() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z" and time.time() < deadline:
            time.sleep(0.05)  # not reaped: we have not waited for it
        assert not _pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not _pid_alive(child.pid)
