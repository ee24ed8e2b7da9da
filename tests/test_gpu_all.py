"""benchmarks/gpu_all.sh --dry-run: every step of the GPU run (tests, ablate vs TRL steps, the fits check, the
embedded sweep) at toy size on the CPU, so the script is known to work before a GPU is lent to run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_script_runs_every_step_in_its_dry_run(tmp_path):
    run = subprocess.run(["bash", "benchmarks/gpu_all.sh", "--dry-run", "--out", str(tmp_path)], cwd=REPO,
                         env=os.environ | {"PYTHON": sys.executable}, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    steps = [line.split("\t") for line in (tmp_path / "steps.tsv").read_text().splitlines()]
    assert [name for name, _, _ in steps] == [
        "gpu_tests", "ablate-tiny-dpo", "trl-tiny-dpo", "ablate-tiny-simpo", "trl-tiny-simpo",
        "ablate-tiny-dpo-fits", "trl-tiny-dpo-fits", "embedded-sweep"]
    assert all(rc == "0" for _, rc, _ in steps)
    report = (tmp_path / "results.md").read_text()
    assert "| tiny | dpo |" in report and "| tiny | simpo |" in report
    assert "Embedded sweep: 4 cells finished" in report
