"""Every benchmark script starts: its imports resolve and ``--help`` answers.

The benchmarks are not run by the suite (they time and train for minutes), so a helper renamed in one
script could break another unnoticed; bench_proseg.py once imported names bench_dpersona.py no longer
had. Starting each script with ``--help`` runs its module-level imports and its argument parser."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

SCRIPTS = sorted((REPO_ROOT / "benchmarks").glob("*.py"))


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_benchmark_starts(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
