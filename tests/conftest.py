"""Shared pytest fixtures and paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
QUBIQ_DIR = SHARED_DIR / "data" / "qubiq_brain_growth"
SCHEMA_PATH = SHARED_DIR / "schemas" / "meta_schema_20240725.json"
BUNDLES = sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


def require_shared(path: Path) -> Path:
    """Skip the calling test with a clear message when ../shared material is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the team's ../shared folder beside the repository")
    return path


def threads_per_worker() -> int:
    """Torch threads for this pytest process and the bundle runs it starts. Alone: 2, as on CI. Under
    pytest-xdist (scripts/run_tests.sh): the cores shared among the workers, so they never oversubscribe."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None:
        return min(os.cpu_count() or 1, 2)
    return max(1, (os.cpu_count() or 1) // int(workers))


@pytest.fixture(autouse=True)
def _few_threads():
    # more torch threads than cores only adds contention
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, threads_per_worker()))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A prepared synthetic data set (120 samples, 4 raters of distinct styles, 64x64) for bundle runs."""
    from multirater_monai.data import prepare_synthetic

    out = tmp_path_factory.mktemp("synthetic") / "data"
    prepare_synthetic(out, num_samples=120, num_raters=4, seed=3, size=64)
    return out
