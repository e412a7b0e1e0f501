"""Fixtures of the interop tier: checkpoints written by the PyPI auto-round package (made once per session)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def autoround_outputs(tmp_path_factory) -> dict[str, Path]:
    """name -> checkpoint directory written by auto-round (see autoround_export.CASES), plus "src" (the float model)."""
    if importlib.util.find_spec("auto_round") is None:
        pytest.skip("auto-round is not installed (pip install -c requirements/constraints.txt -r requirements/interop.txt)")
    from tests.interop.autoround_export import CASES

    out = tmp_path_factory.mktemp("autoround")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "interop" / "autoround_export.py"), str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"auto-round export failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
    dirs = {name: Path((out / name / "DONE").read_text()) for name in CASES}
    dirs["src"] = out / "src"
    return dirs
