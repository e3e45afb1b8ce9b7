"""Preparing data sets by name, reusing prepared ones, and the ``python -m multirater_monai.data`` CLI."""

import json
import subprocess
import sys

import pytest

from multirater_monai.data import MultiRaterDataError, ensure_dataset, prepare_dataset
from multirater_monai.data.__main__ import main


def test_prepare_and_ensure(tmp_path):
    out = tmp_path / "syn"
    path = ensure_dataset("synthetic", out, num_samples=4, seed=0)
    assert path == str(out / "datalist.json")
    before = (out / "datalist.json").stat().st_mtime_ns
    # prepared already: returned as it is, not rebuilt (different options are not re-applied)
    assert ensure_dataset("synthetic", out, num_samples=9) == path
    assert (out / "datalist.json").stat().st_mtime_ns == before
    assert len(json.loads((out / "datalist.json").read_text())["training"]) == 2  # 4 - 1 - 1
    with pytest.raises(MultiRaterDataError, match=r"unknown data set 'mnist'; fix: choose one of \['folder', 'lidc', 'lidc-phantom', 'qubiq', 'riga', 'synthetic'\]"):
        prepare_dataset("mnist", tmp_path / "x")
    with pytest.raises(MultiRaterDataError, match=r"has no option\(s\) \['num_sample'\]; fix: use only \["):
        prepare_dataset("synthetic", tmp_path / "x", num_sample=3)
    assert not (tmp_path / "x").exists()


def test_cli_prints_path_and_counts(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["prepare", "synthetic", "--out", str(out), "--num_samples", "5", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # 5 samples: round(0.75) = 1 validation, 1 test, 3 training
    assert lines == [str(out / "datalist.json"), "synthetic: training: 3, validation: 1, test: 1 (num_raters=4)"]


def test_cli_error_is_one_line_and_non_zero(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["prepare", "synthetic", "--out", str(tmp_path), "--num_samples", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path} exists and is not empty; fix:")


def test_cli_runs_as_module(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "multirater_monai.data", "prepare", "qubiq", "--out", str(tmp_path / "q"),
         "--root", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert f"error: QUBIQ folder {tmp_path / 'absent'} does not exist; fix: pass root=" in result.stderr
