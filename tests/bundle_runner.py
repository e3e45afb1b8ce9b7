"""Running MONAI's own bundle commands in a subprocess, for the end-to-end bundle tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO_ROOT


def bundle(args: list[str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """``python -m monai.bundle *args``; 2 threads, as on CI."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def bundle_ok(args: list[str]) -> str:
    """As :func:`bundle`, failing the test with the tail of the output when the command fails."""
    proc = bundle(args)
    assert proc.returncode == 0, f"monai.bundle {' '.join(args[:3])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr
