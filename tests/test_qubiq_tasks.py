"""Every QUBIQ 2021 task chosen with ``task=``: four-channel brain-tumor images keep their channels,
the rater count comes from the files found (fixture release folders written here)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from multirater_monai.data import MultiRaterDataError, load_multirater_datalist, prepare_qubiq, validate_multirater_datalist
from multirater_monai.data.__main__ import main
from multirater_monai.data.qubiq import resolve_qubiq_task
from multirater_monai.transforms import MultiRaterPreprocessing


def _save(path: Path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))


def _release(root: Path) -> Path:
    """``root/<data set>/Training/caseNN``: brain-tumor (6, 5, 4) images, channel c = 10 c + case, three
    tasks x 3 raters (task t, rater r marks rows 0..r-1 and columns 0..t-1: r * t pixels); prostate
    (7, 6) images, two tasks x 6 raters (rater r marks r pixels of row 0), case 2 without rater 6 of
    task02; kidney (4, 4), 3 raters."""
    for case in (1, 2, 3, 4):
        d = root / "brain-tumor" / "Training" / f"case{case:02d}"
        _save(d / "image.nii.gz", np.stack([np.full((6, 5), 10.0 * c + case, np.float32) for c in range(4)], -1))
        for t in (1, 2, 3):
            for r in (1, 2, 3):
                m = np.zeros((6, 5), np.uint8)
                m[:r, :t] = 1
                _save(d / f"task{t:02d}_seg{r:02d}.nii.gz", m)
        d = root / "prostate" / "Training" / f"case{case:02d}"
        _save(d / "image.nii.gz", np.full((7, 6), case, np.int16))
        for t in (1, 2):
            for r in range(1, 7):
                if (case, t, r) == (2, 2, 6):
                    continue
                m = np.zeros((7, 6), np.uint8)
                m[0, :r] = 1
                _save(d / f"task{t:02d}_seg{r:02d}.nii.gz", m)
        d = root / "kidney" / "Training" / f"case{case:02d}"
        _save(d / "image.nii.gz", np.zeros((4, 4), np.int16))
        for r in (1, 2, 3):
            _save(d / f"task01_seg{r:02d}.nii.gz", np.eye(4, dtype=np.uint8))
    return root


def test_brain_tumor_keeps_four_channels(tmp_path):
    root = _release(tmp_path / "qubiq")
    path = prepare_qubiq(root, tmp_path / "bt", task="brain-tumor/task02", split=(0.5, 0.25, 0.25))
    data = json.loads(Path(path).read_text())
    assert data["in_channels"] == 4 and data["num_raters"] == 3 and data["spatial_dims"] == 2
    assert data["name"] == "qubiq-brain-tumor-task02" and data["task"] == "task02"
    assert [len(data[k]) for k in ("training", "validation", "test")] == [2, 1, 1]
    entries = [e for k in ("training", "validation", "test") for e in load_multirater_datalist(path, k)]
    validate_multirater_datalist(entries, num_raters=3)
    case3 = next(e for e in entries if e["case_id"] == "case03")
    assert case3["label"][1].endswith("brain-tumor/Training/case03/task02_seg02.nii.gz")  # masks stay in place
    s = MultiRaterPreprocessing(spatial_dims=2, num_raters=3)(case3)
    assert s["image"].shape == (4, 6, 5)
    assert [float(s["image"][c, 0, 0]) for c in range(4)] == [3.0, 13.0, 23.0, 33.0]
    assert s["label"].sum((1, 2)).tolist() == [2.0, 4.0, 6.0]  # r * t with t = 2


def test_rater_count_from_files_and_task_names(tmp_path):
    root = _release(tmp_path / "qubiq")
    path = prepare_qubiq(root, tmp_path / "pr", task="prostate-task02", split=(1, 0, 0))
    data = json.loads(Path(path).read_text())
    assert data["num_raters"] == 6 and data["in_channels"] == 1 and data["image_shapes"] == [[7, 6]]
    assert not (tmp_path / "pr" / "images").exists()  # single-channel images are referenced, not copied
    case2 = next(e for e in load_multirater_datalist(path) if e["case_id"] == "case02")
    assert case2["label"][5] is None
    s = MultiRaterPreprocessing(spatial_dims=2, num_raters=6)(case2)
    assert s["label"].sum((1, 2)).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 0.0] and s["rater_mask"].tolist()[5] is False
    assert resolve_qubiq_task(root, "kidney")[1:] == ("kidney", "task01")
    assert resolve_qubiq_task(root / "kidney" / "Training", "task01") == (root / "kidney" / "Training", None, "task01")
    with pytest.raises(MultiRaterDataError, match=r"QUBIQ brain-tumor has tasks \['task01', 'task02', 'task03'\]; fix: pass task=brain-tumor/task01"):
        resolve_qubiq_task(root, "brain-tumor")
    with pytest.raises(MultiRaterDataError, match="QUBIQ prostate has no task03"):
        resolve_qubiq_task(root, "prostate/task03")
    with pytest.raises(MultiRaterDataError, match="QUBIQ task 'pancreas' is not known"):
        resolve_qubiq_task(root, "pancreas")
    with pytest.raises(MultiRaterDataError, match="no caseNN/ folders for QUBIQ brain-growth"):
        resolve_qubiq_task(root, "brain-growth")


def test_mismatched_image_named_and_cli(tmp_path, capsys):
    root = _release(tmp_path / "qubiq")
    _save(root / "kidney" / "Training" / "case03" / "image.nii.gz", np.zeros((5, 4), np.int16))
    with pytest.raises(MultiRaterDataError, match=r"case03/image.nii.gz: shape \(5, 4\) does not fit the rater masks' \(4, 4\)"):
        prepare_qubiq(root, tmp_path / "k", task="kidney")
    assert not (tmp_path / "k").exists()
    assert main(["prepare", "qubiq", "--out", str(tmp_path / "cli"), "--root", str(root), "--task", "brain-tumor/task03",
                 "--split", "[0.5,0.25,0.25]"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        "qubiq-brain-tumor-task03: training: 2, validation: 1, test: 1 (num_raters=3)"
    assert sorted(p.name for p in (tmp_path / "cli" / "images").iterdir()) == [f"case{c:02d}.nii.gz" for c in (1, 2, 3, 4)]
