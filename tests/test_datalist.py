"""Multi-rater datalists: loading with missing raters, atomic writing, and the one-message validator."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from multirater_monai.data import (
    MultiRaterDataError,
    load_multirater_datalist,
    read_datalist_header,
    split_entries,
    validate_multirater_datalist,
    write_multirater_datalist,
)


def _nii(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))
    return str(path)


def test_write_then_load_resolves_paths_and_keeps_missing_raters(tmp_path):
    path = write_multirater_datalist(
        tmp_path / "datalist.json",
        {"training": [{"image": "images/a.nii.gz", "label": ["labels/a1.nii.gz", None, "/abs/a3.nii.gz"],
                       "case_id": "a"}],
         "validation": [{"image": "images/b.nii.gz", "label": ["labels/b1.nii.gz", "labels/b2.nii.gz", None]}],
         "test": []},
        name="toy", rater_names=["A1", "A2", "A3"],
    )
    training = load_multirater_datalist(path)
    assert training == [{"image": str(tmp_path / "images/a.nii.gz"),
                         "label": [str(tmp_path / "labels/a1.nii.gz"), None, "/abs/a3.nii.gz"],
                         "case_id": "a"}]
    validation = load_multirater_datalist(path, "validation", base_dir="/data")
    assert validation[0]["label"] == ["/data/labels/b1.nii.gz", "/data/labels/b2.nii.gz", None]
    assert load_multirater_datalist(path, "test") == []
    header = read_datalist_header(path)
    # num_raters is filled in from the longest label list (3)
    assert header == {"name": "toy", "rater_names": ["A1", "A2", "A3"], "num_raters": 3}


def test_load_errors_name_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(MultiRaterDataError, match=r"nope\.json does not exist.*prepare"):
        load_multirater_datalist(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": [\n')
    with pytest.raises(MultiRaterDataError, match=r"bad\.json is not valid JSON \(line 2"):
        load_multirater_datalist(bad)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"training": []}))
    with pytest.raises(MultiRaterDataError, match=r"no section 'validation' \(it has \['training'\]\)"):
        load_multirater_datalist(ok, "validation")


def test_empty_data_set_is_one_clear_error():
    with pytest.raises(MultiRaterDataError, match=r"empty \(no entries\).*fix"):
        validate_multirater_datalist([], source="dl.json")


def test_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "datalist.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        # a set is not JSON-serialisable: the failure must come before anything is written
        write_multirater_datalist(target, {"training": [{"image": "a", "label": ["b"], "bad": {1}}]})
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["datalist.json"]  # no temporary file left


def test_validator_lists_every_bad_entry_in_one_message(tmp_path):
    img = _nii(tmp_path / "img.nii.gz", np.zeros((8, 6), np.float32))
    good = _nii(tmp_path / "good_r1.nii.gz", np.zeros((8, 6), np.uint8))
    wrong_shape = _nii(tmp_path / "wrong_shape_r2.nii.gz", np.zeros((6, 8), np.uint8))
    nan_img = _nii(tmp_path / "nan_img.nii.gz", np.full((8, 6), np.nan, np.float32))
    garbage = tmp_path / "garbage_r1.nii.gz"
    garbage.write_bytes(b"not an image at all")
    entries = [
        {"image": img, "label": [good, good, None], "case_id": "fine"},
        {"image": str(tmp_path / "missing_img.nii.gz"), "label": [good, None, None]},
        {"image": img, "label": [good, str(tmp_path / "missing_r2.nii.gz"), None]},
        {"image": img, "label": [good, wrong_shape, None]},
        {"image": img, "label": [good, good]},  # 2 raters, 3 expected
        {"image": img, "label": [None, None, None], "case_id": "nobody"},
        {"image": nan_img, "label": [good, None, None]},
        {"image": img, "label": [str(garbage), None, None]},
        {"image": img, "label": "single.nii.gz"},
    ]
    with pytest.raises(MultiRaterDataError) as info:
        validate_multirater_datalist(entries, num_raters=3, source="my_datalist.json")
    msg = str(info.value)
    # 8 bad entries, one problem each; entry 0 is fine
    assert msg.startswith("8 problem(s) in my_datalist.json (9 entries checked)")
    assert len(info.value.problems) == 8
    assert "entry 0" not in msg
    assert "entry 1: image file" in msg and "missing_img.nii.gz does not exist" in msg
    assert "entry 2: rater 1 label file" in msg and "missing_r2.nii.gz does not exist" in msg and "set this rater to null" in msg
    assert "wrong_shape_r2.nii.gz has shape (6, 8) but image" in msg and "resample" in msg
    assert "entry 4: has 2 rater entries, expected 3" in msg
    assert "entry 5 (nobody): no rater annotated" in msg
    assert "nan_img.nii.gz contains NaN" in msg
    assert "garbage_r1.nii.gz cannot be read" in msg
    assert "entry 8: \"label\" must be a list" in msg


def test_validator_accepts_trailing_singleton_and_channel_axes(tmp_path):
    # QUBIQ stores 2D slices as (H, W, 1); a multi-channel image may carry a trailing channel axis
    img = _nii(tmp_path / "img.nii.gz", np.zeros((8, 6, 1), np.uint8))
    rgb = _nii(tmp_path / "rgb.nii.gz", np.zeros((8, 6, 1, 1, 3), np.uint8))
    lab = _nii(tmp_path / "lab.nii.gz", np.zeros((8, 6), np.uint8))
    validate_multirater_datalist([{"image": img, "label": [lab]}, {"image": rgb, "label": [lab, None]}])


def test_split_entries_is_seeded_disjoint_and_complete():
    entries = [{"case_id": i} for i in range(20)]
    a = split_entries(entries, (0.7, 0.15, 0.15), seed=3)
    # 20 * 0.15 = 3 validation, 3 test, the remaining 14 training
    assert [len(a[k]) for k in ("training", "validation", "test")] == [14, 3, 3]
    ids = [e["case_id"] for k in a for e in a[k]]
    assert sorted(ids) == list(range(20))
    assert a == split_entries(entries, (0.7, 0.15, 0.15), seed=3)
    assert a != split_entries(entries, (0.7, 0.15, 0.15), seed=4)
    with pytest.raises(ValueError, match="no training"):
        split_entries(entries[:2], (0.0, 0.5, 0.5))
