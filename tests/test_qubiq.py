"""QUBIQ layout: entries, split by case, 2D loading of (H, W, 1) slices; real data where present."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from multirater_monai.transforms import MultiRaterPreprocessing
from multirater_monai.data import (
    MultiRaterDataError,
    load_multirater_datalist,
    prepare_qubiq,
    qubiq_entries,
    read_datalist_header,
    validate_multirater_datalist,
)

REAL_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qubiq_brain_growth"
needs_real = pytest.mark.skipif(
    not REAL_ROOT.is_dir(), reason=f"QUBIQ brain-growth data not found at {REAL_ROOT} (shared data absent here)"
)


def _fake_qubiq(root, n_cases=3, raters=(1, 2, 3), drop=None):
    """caseNN/image.nii.gz (6, 5, 1) + task01_segRR.nii.gz; ``drop=(case, rater)`` leaves one rater out."""
    for c in range(1, n_cases + 1):
        d = root / f"case{c:02d}"
        d.mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.full((6, 5, 1), c, np.uint8), np.eye(4)), str(d / "image.nii.gz"))
        for r in raters:
            if drop == (c, r):
                continue
            seg = np.zeros((6, 5, 1), np.uint8)
            seg[: r + 1, :2] = 1
            nib.save(nib.Nifti1Image(seg, np.eye(4)), str(d / f"task01_seg{r:02d}.nii.gz"))
    (root / "README.md").write_text("not a case")
    return root


def test_entries_keep_rater_order_and_missing_raters(tmp_path):
    root = _fake_qubiq(tmp_path / "q", n_cases=3, drop=(2, 2))
    entries = qubiq_entries(root)
    assert [e["case_id"] for e in entries] == ["case01", "case02", "case03"]
    assert entries[1]["label"] == [str(root / "case02/task01_seg01.nii.gz"), None,
                                   str(root / "case02/task01_seg03.nii.gz")]
    with pytest.raises(MultiRaterDataError, match=r"case01: no task02_segRR.nii.gz rater files; fix: check task="):
        qubiq_entries(root, task="task02")
    with pytest.raises(MultiRaterDataError, match="does not exist; fix: pass root="):
        qubiq_entries(tmp_path / "absent")
    with pytest.raises(MultiRaterDataError, match="no caseNN/ folders"):
        qubiq_entries(tmp_path)  # holds q/, not caseNN/


def test_prepare_and_load_single_slice_volumes_as_2d(tmp_path):
    root = _fake_qubiq(tmp_path / "q", n_cases=4, drop=(2, 2))
    path = prepare_qubiq(root, tmp_path / "out", split=(0.5, 0.25, 0.25), seed=0)
    header = read_datalist_header(path)
    assert header["spatial_dims"] == 2 and header["num_raters"] == 3 and header["image_shapes"] == [[6, 5, 1]]
    sections = {k: load_multirater_datalist(path, k) for k in ("training", "validation", "test")}
    assert [len(v) for v in sections.values()] == [2, 1, 1]
    entry = next(e for v in sections.values() for e in v if e["case_id"] == "case02")
    validate_multirater_datalist([entry], num_raters=3)
    sample = MultiRaterPreprocessing(spatial_dims=2, num_raters=3)(entry)
    assert sample["image"].shape == (1, 6, 5) and float(sample["image"].max()) == 2.0
    assert sample["label"].shape == (3, 6, 5)
    assert sample["rater_mask"].tolist() == [True, False, True]
    # rater r marked rows 0..r, columns 0..1: areas 2*(r+1); rater 2 missing -> 0
    assert sample["label"].sum((1, 2)).tolist() == [4.0, 0.0, 8.0]
    assert sample["image"].affine.shape == (3, 3)  # the dropped axis leaves the affine too
    # the data stays where it is: the datalist points at the original files
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "datalist.json"]


@pytest.mark.shared_data
@needs_real
def test_real_brain_growth_data(tmp_path):
    readme = (REAL_ROOT / "README.md").read_text()
    assert "7 raters" in readme
    entries = qubiq_entries(REAL_ROOT)
    assert len(entries) == 34 and all(len(e["label"]) == 7 and None not in e["label"] for e in entries)
    path = prepare_qubiq(REAL_ROOT, tmp_path / "qubiq", seed=0)
    data = json.loads(Path(path).read_text())
    # 34 cases: round(34 * 0.15) = 5 validation, 5 test, 24 training; split by case
    assert [len(data[k]) for k in ("training", "validation", "test")] == [24, 5, 5]
    cases = [e["case_id"] for k in ("training", "validation", "test") for e in data[k]]
    assert sorted(cases) == sorted(e["case_id"] for e in entries)
    assert data["spatial_dims"] == 2 and data["image_shapes"] == [[128, 128, 1]]
    validate_multirater_datalist(load_multirater_datalist(path, "validation"), num_raters=7)
    sample = MultiRaterPreprocessing(spatial_dims=2, num_raters=7)(load_multirater_datalist(path, "test")[0])
    assert sample["image"].shape == (1, 128, 128) and sample["label"].shape == (7, 128, 128)
    assert set(torch.unique(sample["label"]).tolist()) == {0.0, 1.0}
    assert bool(sample["rater_mask"].all())
