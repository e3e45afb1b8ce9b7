"""``folder``: per-rater 3D volumes in a user's layout -> 2D slices, split by subject; known voxel counts."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from multirater_monai.data import MultiRaterDataError, load_multirater_datalist, validate_multirater_datalist
from multirater_monai.data.__main__ import main
from multirater_monai.data.folder import prepare_folder
from multirater_monai.transforms import MultiRaterPreprocessing

SHAPE = (6, 5, 4)  # X, Y, Z
AFFINE = np.array([[2.0, 0, 0, 10], [0, 3, 0, 20], [0, 0, 4, 30], [0, 0, 0, 1]])


def _write(path: Path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), AFFINE), str(path))


def _npc_like(root: Path, n_subjects=4, contrasts=("image",)):
    """Subject Pn: image value 10n + z (+100 per extra contrast); rater 1 marks x 1..2, y 1..3 on z 1, 2
    (6 voxels a slice); rater 2 marks x 0..3, y 0..1 on z 2 (8 voxels); rater 3 marks voxel (0, 0, 1),
    and is missing for P2. Slices z 1, 2 are marked, z 0, 3 are empty."""
    z = np.arange(SHAPE[2], dtype=np.float32)
    for n in range(1, n_subjects + 1):
        d = root / f"P{n}"
        for c, name in enumerate(contrasts):
            _write(d / f"{name}.nii.gz", np.broadcast_to(10.0 * n + z + 100 * c, SHAPE).astype(np.float32))
        r1 = np.zeros(SHAPE, np.uint8)
        r1[1:3, 1:4, 1:3] = 1
        r2 = np.zeros(SHAPE, np.uint8)
        r2[0:4, 0:2, 2] = 1
        r3 = np.zeros(SHAPE, np.uint8)
        r3[0, 0, 1] = 1
        _write(d / "label_r1.nii.gz", r1)
        _write(d / "label_r2.nii.gz", r2)
        if n != 2:
            _write(d / "label_r3.nii.gz", r3)
    return root


def _load(path, section):
    return load_multirater_datalist(path, section)


def test_slices_marked_plus_share_of_empty_split_by_subject(tmp_path):
    root = _npc_like(tmp_path / "npc")
    path = prepare_folder(tmp_path / "out", root, empty_fraction=0.5, split=(0.5, 0.25, 0.25), seed=1, progress=False)
    data = json.loads(Path(path).read_text())
    assert data["num_raters"] == 3 and data["rater_names"] == ["R1", "R2", "R3"] and data["in_channels"] == 1
    # 4 subjects: 2 / 1 / 1, never one subject in two sections
    subjects = {k: {e["patient_id"] for e in data[k]} for k in ("training", "validation", "test")}
    assert [len(s) for s in subjects.values()] == [2, 1, 1]
    assert set.union(*subjects.values()) == {"P1", "P2", "P3", "P4"}
    assert sum(len(s) for s in subjects.values()) == 4
    # per subject: the 2 marked slices and round(0.5 * 2) = 1 of the 2 empty ones
    assert data["source"]["slices_marked"] == 8 and data["source"]["slices_empty"] == 8
    assert data["source"]["slices_empty_kept"] == 4
    entries = [e for k in ("training", "validation", "test") for e in load_multirater_datalist(path, k)]
    for subject in ("P1", "P2", "P3", "P4"):
        kept = sorted(e["slice_index"] for e in entries if e["patient_id"] == subject)
        assert len(kept) == 3 and {1, 2} <= set(kept) and set(kept) - {1, 2} <= {0, 3}
    validate_multirater_datalist(entries, num_raters=3)
    prep = MultiRaterPreprocessing(spatial_dims=2, num_raters=3)
    by_id = {e["case_id"]: e for e in entries}
    s = prep(by_id["P3_k002"])
    assert s["image"].shape == (1, 6, 5) and float(s["image"].min()) == float(s["image"].max()) == 32.0
    assert s["label"].sum((1, 2)).tolist() == [6.0, 8.0, 0.0] and s["rater_mask"].tolist() == [True, True, True]
    s = prep(by_id["P2_k001"])  # rater 3 has no file for P2: missing on every slice
    assert s["label"].sum((1, 2)).tolist() == [6.0, 0.0, 0.0] and s["rater_mask"].tolist() == [True, True, False]
    assert by_id["P2_k001"]["label"][2] is None
    # the slice keeps its place in space: origin moved by 2 slices of 4 mm along z
    affine = nib.load(by_id["P3_k002"]["image"]).affine
    assert affine[:3, 3].tolist() == [10.0, 20.0, 38.0] and affine[0, 0] == 2.0 and affine[1, 1] == 3.0
    # the same seed picks the same empty slices
    again = prepare_folder(tmp_path / "again", root, empty_fraction=0.5, split=(0.5, 0.25, 0.25), seed=1, progress=False)
    assert json.loads(Path(again).read_text())["training"] == data["training"]


def test_other_axis_all_empty_kept_and_contrasts_as_channels(tmp_path):
    root = _npc_like(tmp_path / "npc", n_subjects=2, contrasts=("t1", "t2"))
    path = prepare_folder(tmp_path / "out", root, image=["{subject}/t1.nii.gz", "{subject}/t2.nii.gz"], axis=0,
                          empty_fraction=1.0, split=(1, 0, 0), progress=False)
    data = json.loads(Path(path).read_text())
    assert data["in_channels"] == 2 and len(data["training"]) == 2 * SHAPE[0]  # every x slice kept
    entries = {e["case_id"]: e for e in load_multirater_datalist(path, "training")}
    s = MultiRaterPreprocessing(spatial_dims=2, num_raters=3)(entries["P1_k001"])
    # slice x = 1: (Y, Z) = (5, 4); rater 1: y 1..3 x z 1..2 = 6 voxels; rater 2: y 0..1 at z 2 = 2
    assert s["image"].shape == (2, 5, 4) and s["label"].sum((1, 2)).tolist() == [6.0, 2.0, 0.0]
    # contrast 2 is contrast 1 + 100; the image value follows z = the second spatial axis of the slice
    assert s["image"][1, 0].tolist() == [110.0, 111.0, 112.0, 113.0] and s["image"][0, 0].tolist() == [10.0, 11.0, 12.0, 13.0]
    assert s["label"].sum((1, 2)).tolist() == [6.0, 2.0, 0.0]
    s = MultiRaterPreprocessing(spatial_dims=2, num_raters=3)(entries["P1_k005"])  # x = 5: nobody marked it
    assert float(s["label"].sum()) == 0.0


def test_bad_layouts_one_message_nothing_written(tmp_path):
    root = _npc_like(tmp_path / "npc", n_subjects=3)
    (root / "P3" / "image.nii.gz").unlink()
    with pytest.raises(MultiRaterDataError, match=r"P3/label_r1.nii.gz: label without an image; expected .*P3/image.nii.gz"):
        prepare_folder(tmp_path / "o1", root, progress=False)
    assert not (tmp_path / "o1").exists()
    _write(root / "P3" / "image.nii.gz", np.zeros(SHAPE, np.float32))
    _write(root / "P1" / "label_r2.nii.gz", np.zeros((6, 5, 3), np.uint8))
    three = np.zeros(SHAPE, np.uint8)
    three[0, 0, 0] = 3
    _write(root / "P2" / "label_r1.nii.gz", three)
    with pytest.raises(MultiRaterDataError) as err:
        prepare_folder(tmp_path / "o2", root, progress=False)
    msg = str(err.value)
    assert "2 problem(s)" in msg
    assert "P1/label_r2.nii.gz has shape (6, 5, 3) but image" in msg and "fix: resample the label" in msg
    assert "P2/label_r1.nii.gz holds values 0, 3, expected a binary mask" in msg
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2*"))
    with pytest.raises(MultiRaterDataError, match=r"no file in .* matches the image pattern '\{subject\}/ct.nii.gz'"):
        prepare_folder(tmp_path / "o3", root, image="{subject}/ct.nii.gz", progress=False)
    with pytest.raises(MultiRaterDataError, match=r"label pattern '\{subject\}/label.nii.gz' has no \{rater\}"):
        prepare_folder(tmp_path / "o4", root, label="{subject}/label.nii.gz", progress=False)


def test_foreground_value_and_cli(tmp_path, capsys):
    root = tmp_path / "multi"
    for n in (1, 2):
        _write(root / f"S{n}" / "img.nii.gz", np.zeros(SHAPE, np.float32))
        lab = np.zeros(SHAPE, np.uint8)
        lab[0, 0, 0] = 2  # class 2: one voxel on z 0
        lab[1:3, 0:2, 3] = 5  # class 5: 4 voxels on z 3
        for r in ("a", "b"):
            _write(root / f"S{n}" / f"seg_{r}.nii.gz", lab)
    assert main(["prepare", "folder", "--out", str(tmp_path / "cli"), "--root", str(root), "--image", "{subject}/img.nii.gz",
                 "--label", "{subject}/seg_{rater}.nii.gz", "--foreground", "5", "--split", "[1,0,0]", "--progress", "False"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "folder-multi: training: 2, validation: 0, test: 0 (num_raters=2)"
    data = json.loads((tmp_path / "cli" / "datalist.json").read_text())
    assert data["rater_names"] == ["a", "b"] and [e["slice_index"] for e in data["training"]] == [3, 3]
    s = MultiRaterPreprocessing(spatial_dims=2, num_raters=2)(load_multirater_datalist(tmp_path / "cli" / "datalist.json")[0])
    assert s["label"].sum((1, 2)).tolist() == [4.0, 4.0]
