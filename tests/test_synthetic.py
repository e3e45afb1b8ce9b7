"""Synthetic multi-rater data: seeded, rater styles differ in the designed direction, files round-trip."""

import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from multirater_monai.transforms import MultiRaterPreprocessing
from multirater_monai.data import (
    MultiRaterDataError,
    SyntheticMultiRaterDataset,
    load_multirater_datalist,
    make_synthetic_sample,
    prepare_synthetic,
    read_datalist_header,
    validate_multirater_datalist,
)
from multirater_monai.data.synthetic import RATER_STYLES


def test_same_seed_same_sample_other_seed_other_sample():
    a, b, c = make_synthetic_sample(5), make_synthetic_sample(5), make_synthetic_sample(6)
    for key in ("image", "label", "rater_mask", "prob"):
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])
    assert a["image"].shape == (1, 64, 64) and a["image"].dtype == np.float32
    assert a["label"].shape == (4, 64, 64) and set(np.unique(a["label"])) <= {0.0, 1.0}
    assert a["rater_mask"].tolist() == [True] * 4
    assert make_synthetic_sample(0, size=(32, 48))["label"].shape == (4, 32, 48)


def _roughness(mask):
    """perimeter^2 / area: 4*pi*... for a disc (about 12.6 in pixels), larger for ragged outlines."""
    perimeter = (mask ^ ndimage.binary_erosion(mask)).sum()
    return perimeter**2 / max(mask.sum(), 1)


def test_rater_styles_differ_in_the_designed_direction():
    samples = [make_synthetic_sample(i, num_raters=5, styles=RATER_STYLES) for i in range(30)]
    labels = np.stack([s["label"] for s in samples]).astype(bool)  # (30, 5, H, W)
    area = labels.sum((2, 3))
    cons, smooth, lib, noisy, misses = (RATER_STYLES.index(n) for n in RATER_STYLES)
    # thresholds 0.8 / gaussian-then-0.5 / 0.2 on the same field: area grows in this order, per sample
    assert (area[:, cons] < area[:, smooth]).all() and (area[:, smooth] < area[:, lib]).all()
    # the conservative core lies inside the liberal mask
    assert not (labels[:, cons] & ~labels[:, lib]).any()
    rough = np.array([[_roughness(m) for m in s] for s in labels])
    others = [cons, smooth, lib, misses]
    assert (rough[:, noisy] > rough[:, others].max(1)).mean() >= 0.9
    assert rough[:, noisy].mean() > 1.5 * rough[:, others].mean()
    # every sample has at least one faint lobe with peak probability 0.6-0.75: a plain p > 0.5
    # rater includes part of it, misses_faint none (about a tenth of the p > 0.5 area on average)
    half = np.stack([s["prob"][0] > 0.5 for s in samples])
    assert (area[:, misses] < half.sum((1, 2))).all()
    assert (1 - area[:, misses] / half.sum((1, 2))).mean() > 0.05
    assert not (labels[:, misses] & ~half).any()


def test_second_structure_layout_and_missing_raters():
    s = make_synthetic_sample(6, num_raters=3, num_structures=2, missing_rate=0.5)
    # structure-major: channels [lesion r0..r2, core r0..r2]
    assert s["label"].shape == (6, 64, 64) and s["prob"].shape == (2, 64, 64)
    present = s["rater_mask"][:3]
    assert s["rater_mask"].tolist() == present.tolist() * 2
    assert present.tolist() == [True, False, True]  # seed 6 drops rater 1
    for r in range(3):
        lesion, core = s["label"][r].astype(bool), s["label"][3 + r].astype(bool)
        if present[r]:
            assert 0 < core.sum() < lesion.sum()
        else:
            assert not lesion.any() and not core.any()


def test_dataset_follows_the_sample_contract():
    ds = SyntheticMultiRaterDataset(num_samples=5, seed=1, num_raters=4)
    assert len(ds) == 5
    d = ds[2]
    assert d["image"].shape == (1, 64, 64) and d["image"].dtype == torch.float32
    assert d["label"].shape == (4, 64, 64) and d["rater_mask"].dtype == torch.bool
    assert torch.equal(d["image"], ds[2]["image"])
    assert torch.equal(d["label"], SyntheticMultiRaterDataset(num_samples=50, seed=1)[2]["label"])
    assert not torch.equal(d["image"], ds[3]["image"])
    flipped = SyntheticMultiRaterDataset(num_samples=5, seed=1, transform=lambda x: {**x, "image": -x["image"]})
    assert torch.equal(flipped[2]["image"], -d["image"])


def test_prepare_synthetic_round_trips_through_the_loaders(tmp_path):
    path = prepare_synthetic(tmp_path / "syn", num_samples=10, num_raters=4, seed=2, missing_rate=0.3)
    header = read_datalist_header(path)
    assert header["num_raters"] == 4 and header["spatial_dims"] == 2 and header["label_channels"] == 4
    sections = {k: load_multirater_datalist(path, k) for k in ("training", "validation", "test")}
    # 10 * 0.15 rounds to 2 for validation and test, 6 for training
    assert [len(v) for v in sections.values()] == [6, 2, 2]
    ids = sorted(e["case_id"] for v in sections.values() for e in v)
    assert ids == [f"syn{i:05d}" for i in range(10)]
    for entries in sections.values():
        validate_multirater_datalist(entries, num_raters=4)
    entry = sections["training"][0]
    index = int(entry["case_id"][3:])
    sample = MultiRaterPreprocessing(spatial_dims=2, num_raters=4)(entry)
    expected = SyntheticMultiRaterDataset(num_samples=10, seed=2, missing_rate=0.3)[index]
    assert torch.equal(sample["image"].as_tensor(), expected["image"].as_tensor())  # float32 stored exactly
    assert torch.equal(sample["label"].as_tensor(), expected["label"].as_tensor())  # same orientation
    assert torch.equal(sample["rater_mask"], expected["rater_mask"])
    assert [f is None for f in entry["label"]] == (~expected["rater_mask"]).tolist()
    # the same seed writes the same data set
    again = prepare_synthetic(tmp_path / "syn2", num_samples=10, num_raters=4, seed=2, missing_rate=0.3)
    assert open(again).read() == open(path).read()


def test_prepare_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    import nibabel as nib

    calls = {"n": 0}
    real_save = nib.save

    def failing_save(img, filename):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError("disk full")
        real_save(img, filename)

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        prepare_synthetic(tmp_path / "syn", num_samples=4)
    assert os.listdir(tmp_path) == []  # neither syn/ nor a temporary folder


def test_prepare_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(MultiRaterDataError, match="exists and is not empty.*not a prepared data set"):
        prepare_synthetic(tmp_path, num_samples=2, overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    out = tmp_path / "ds"
    prepare_synthetic(out, num_samples=3, seed=0)
    with pytest.raises(MultiRaterDataError, match="pass overwrite=True"):
        prepare_synthetic(out, num_samples=3, seed=1)
    prepare_synthetic(out, num_samples=4, seed=1, overwrite=True)
    assert len(os.listdir(out / "images")) == 4
    assert sorted(os.listdir(tmp_path)) == ["ds", "mine.txt"]
