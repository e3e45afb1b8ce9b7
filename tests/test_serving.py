"""Serving components (multirater_monai.serving), in the project's own environment.

* a bundle's inference run in-process on one image gives the files ``monai.bundle run`` writes, and a
  request chooses which one it gets: all raters, one rater (that rater's channel), the agreement map,
  S samples of a generative bundle;
* per-rater label tags of a datastore become a multi-rater datalist (missing raters ``null``), and the
  training command carries the datalist, the bundle root and the epochs.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from multirater_monai.serving import BundleInference, datalist_from_rater_tags, select_output, training_command
from multirater_monai.utils.errors import MultiRaterDataError

from .bundle_runner import TINY, overrides_dict
from .conftest import REPO_ROOT
from .test_bundles_common import _network


def _root(tmp_path, name):
    root = tmp_path / f"root_{name}"
    (root / "models").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(_network(name).state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "case7.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 36)).astype(np.float32), np.diag([0.7, 0.7, 1, 1])), path)
    return path


def test_per_rater_request_choices(tmp_path, image):
    runner = BundleInference(REPO_ROOT / "bundles" / "mh_unet", _root(tmp_path, "mh_unet"), overrides_dict(TINY["mh_unet"]))
    assert runner.describe() == {"bundle": "mh_unet", "rater_names": ["A1", "A2", "A3", "A4"],
                                 "outputs": ["calibrated", "personalized"], "generative": False,
                                 "agreement_output": "calibrated",
                                 "choices": ["personalized", "rater", "agreement", "dicom-seg"]}
    files = runner.run(str(image), str(tmp_path / "out"))
    assert sorted(files) == ["calibrated", "personalized"]
    path, info = select_output(files, "personalized", runner.rater_names)
    stack = nib.load(path).get_fdata()
    assert stack.shape == (40, 36, 4) and set(np.unique(stack)) <= {0, 1}
    assert info["label_names"] == {"A1": 1, "A2": 2, "A3": 3, "A4": 4}
    path, info = select_output(files, "rater", runner.rater_names, rater="A3")
    np.testing.assert_array_equal(nib.load(path).get_fdata(), 3 * stack[..., 2])  # A3's mask holds label 3
    assert info == {"output": "rater", "rater": "A3", "channels": ["A3"], "label_names": {"A3": 3}}
    path, info = select_output(files, "agreement", runner.rater_names, agreement_key=runner.agreement_key)
    agreement = nib.load(path).get_fdata()
    assert agreement.shape == (40, 36) and 0 <= agreement.min() and agreement.max() <= 1
    assert info["source"] == "calibrated"
    with pytest.raises(MultiRaterDataError, match=r"rater 'B9' is not one of this bundle's raters \['A1'"):
        select_output(files, "rater", runner.rater_names, rater="B9")
    with pytest.raises(MultiRaterDataError, match="draws no samples"):
        select_output(files, "samples", runner.rater_names)
    with pytest.raises(MultiRaterDataError, match="draws no samples"):
        runner.run(str(image), str(tmp_path / "o2"), num_samples=3)


def test_generative_bundle_draws_the_requested_number_of_samples(tmp_path, image):
    runner = BundleInference(REPO_ROOT / "bundles" / "dpersona", _root(tmp_path, "dpersona"),
                             overrides_dict(TINY["dpersona"]))
    files = runner.run(str(image), str(tmp_path / "out"), num_samples=3)
    path, info = select_output(files, "samples", runner.rater_names)
    samples = nib.load(path).get_fdata()
    assert samples.shape == (40, 36, 3) and info["channels"] == ["sample_1", "sample_2", "sample_3"]
    # the agreement map is the mean of the 3 samples' probabilities: values in [0, 1]
    agreement = nib.load(select_output(files, "agreement", runner.rater_names, agreement_key="agreement")[0]).get_fdata()
    assert agreement.shape == (40, 36) and 0 <= agreement.min() and agreement.max() <= 1
    assert nib.load(files["personalized"]).shape == (40, 36, 4)


def test_a_dicom_series_through_a_2d_bundle(tmp_path):
    import pydicom

    from .dicom_series import COLS, ROWS, write_ct_series

    series = tmp_path / "series"
    write_ct_series(series, num_slices=3)
    runner = BundleInference(REPO_ROOT / "bundles" / "mh_unet", _root(tmp_path, "mh_unet"), overrides_dict(TINY["mh_unet"]))
    path, info = runner.run_request(str(series), str(tmp_path / "a"), output="personalized")
    assert nib.load(path).shape == (COLS, ROWS, 3, 4)  # slice by slice, back as the series' volume
    path, info = runner.run_request(str(series), str(tmp_path / "b"), output="dicom-seg")
    seg = pydicom.dcmread(path)
    assert info["segments"] == ["A1", "A2", "A3", "A4", "calibrated >= 0.5"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == info["segments"]
    assert int(seg.NumberOfFrames) == 5 * 3  # every segment on every source frame
    with pytest.raises(MultiRaterDataError, match="output 'mask' is not one of personalized, rater, agreement"):
        runner.run_request(str(series), str(tmp_path / "c"), output="mask")


def test_datalist_from_rater_tags(tmp_path):
    labels = {
        "/d/img3.nii.gz": {},  # no rater yet: left out
        "/d/img1.nii.gz": {"A1": "/d/labels/A1/img1.nii.gz", "A2": "/d/labels/A2/img1.nii.gz", "final": "/x"},
        "/d/img2.nii.gz": {"A2": "/d/labels/A2/img2.nii.gz"},
    }
    sizes = datalist_from_rater_tags(tmp_path / "dl.json", labels, ["A1", "A2", "A3"], validation_fraction=0.5)
    assert sizes == {"training": 1, "validation": 1}
    written = json.loads((tmp_path / "dl.json").read_text())
    assert written["training"] == [{"image": "/d/img1.nii.gz", "label": ["/d/labels/A1/img1.nii.gz", "/d/labels/A2/img1.nii.gz", None]}]
    assert written["validation"] == [{"image": "/d/img2.nii.gz", "label": [None, "/d/labels/A2/img2.nii.gz", None]}]
    assert written["num_raters"] == 3 and written["rater_names"] == ["A1", "A2", "A3"]
    with pytest.raises(MultiRaterDataError, match=r"no image of the datastore has a label tagged with a rater name"):
        datalist_from_rater_tags(tmp_path / "x.json", {"/d/a.nii.gz": {"final": "/l"}}, ["A1"])


def test_training_command_of_a_two_stage_bundle():
    cmd = training_command(REPO_ROOT / "bundles" / "dpersona", "/m/dpersona", "/d/dl.json", max_epochs=1,
                           overrides={"backbone#channels": [8, 16, 32]})
    args = dict(zip(cmd[7::2], cmd[8::2]))
    assert cmd[1:7] == ["-m", "monai.bundle", "run", "training", "--config_file",
                        str(REPO_ROOT / "bundles" / "dpersona" / "configs" / "train.json")]
    assert args == {"--bundle_root": "/m/dpersona", "--datalist": "/d/dl.json", "--rank_raters_by_area": "False",
                    "--resume": "False", "--epochs": "1", "--val_interval": "1", "--stage2_epochs": "1",
                    "--backbone#channels": "[8, 16, 32]"}
