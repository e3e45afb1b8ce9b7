"""The bundles' code dependency installs from this repository: a wheel built from it gives every module of
``multirater_monai`` to another environment, and each bundle's metadata names that package and version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import BUNDLES, REPO_ROOT

pytestmark = pytest.mark.slow


def test_a_wheel_of_the_repository_installs_every_module_elsewhere(tmp_path):
    # build from a copy, so the repository gets no build/ folder
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "multirater_monai", src / "multirater_monai",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("multirater_monai-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True,
                   timeout=300)

    # the installed copy, not the repository's editable one: every module imports, the data CLI starts
    code = ("import importlib, pkgutil, multirater_monai as m; "
            "names = [i.name for i in pkgutil.walk_packages(m.__path__, 'multirater_monai.')]; "
            "[importlib.import_module(n) for n in names if not n.endswith('__main__')]; "
            "print(m.__file__, m.__version__, len(names))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, version, count = proc.stdout.split()
    assert where.startswith(str(site)) and int(count) > 40
    cli = subprocess.run([sys.executable, "-m", "multirater_monai.data", "prepare", "no-such-set", "--out", "x"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "unknown data set 'no-such-set'" in cli.stdout + cli.stderr

    for name in BUNDLES:
        meta = json.loads((REPO_ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
        assert meta["required_packages_version"]["multirater_monai"] == version, name
