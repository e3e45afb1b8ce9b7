"""A DICOM series folder: recognising one, reading its instances in slice order, and its pixel geometry.

MONAI's readers (``PydicomReader``, ``ITKReader``) load a series folder as one volume; the DICOM-SEG
writer needs, for every source frame, which voxel of that volume each pixel is. The voxel is found
from the frame's own tags (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) and the
volume's affine, so the mapping holds whatever axis order or flips a reader chose.
"""

from __future__ import annotations

import os

import numpy as np

from ..utils.errors import MultiRaterDataError

__all__ = ["is_dicom_file", "is_dicom_series_dir", "dicom_series_folders", "read_series", "require_one_series",
           "frame_voxel_indices"]


def is_dicom_file(path: str) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    names = (os.path.join(folder, n) for n in sorted(os.listdir(folder)) if not n.startswith("."))
    return [p for p in names if os.path.isfile(p) and is_dicom_file(p)]


def is_dicom_series_dir(path) -> bool:
    """A folder holding DICOM files (one series: what MONAI's readers load as one volume)."""
    return bool(_dicom_files(str(path)))


def dicom_series_folders(folder: str) -> list[str]:
    """``folder`` itself when it holds DICOM files, else each sub-folder that does (sorted)."""
    if is_dicom_series_dir(folder):
        return [str(folder)]
    subs = (os.path.join(folder, n) for n in sorted(os.listdir(folder)) if not n.startswith("."))
    return [s for s in subs if os.path.isdir(s) and is_dicom_series_dir(s)]


def _require_one(folder: str, datasets: list) -> None:
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) != 1:
        raise MultiRaterDataError(
            f"{folder} holds {len(series)} DICOM series; fix: put each series in its own folder "
            "(MONAI's readers load one folder as one volume)"
        )


def require_one_series(folder: str) -> str:
    """``folder`` if its DICOM files are one series (headers only); else one clear error before any work."""
    import pydicom

    _require_one(folder, [pydicom.dcmread(f, stop_before_pixels=True) for f in _dicom_files(str(folder))])
    return folder


def read_series(folder: str) -> list:
    """The series' instances (pydicom datasets) sorted along the slice normal; one series per folder."""
    import pydicom

    files = _dicom_files(str(folder))
    if not files:
        raise MultiRaterDataError(f"{folder} holds no DICOM file; fix: pass the folder of one DICOM series")
    datasets = [pydicom.dcmread(f) for f in files]
    _require_one(folder, datasets)
    missing = [f for f, ds in zip(files, datasets) if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds]
    if missing:
        raise MultiRaterDataError(
            f"{missing[0]} has no ImagePositionPatient/ImageOrientationPatient; fix: use a cross-sectional "
            "series (CT, MR, PET) whose instances carry the image plane tags"
        )
    normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
    return sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))


def frame_voxel_indices(ds, affine_lps: np.ndarray, spatial_shape) -> np.ndarray:
    """``(Rows, Columns, 3)`` integer voxel indices of each pixel of frame ``ds`` in a volume with ``affine_lps``.

    DICOM: pixel (row r, column c) lies at ``IPP + c * dc * X + r * dr * Y`` (X, Y the row and column
    direction cosines of IOP, ``PixelSpacing = [dr, dc]``). Raises when a pixel is not on a voxel centre.
    """
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    rows, cols = np.mgrid[: int(ds.Rows), : int(ds.Columns)]
    points = (np.asarray(ds.ImagePositionPatient, float)[None, None]
              + cols[..., None] * dc * iop[None, None, :3] + rows[..., None] * dr * iop[None, None, 3:])
    inverse = np.linalg.inv(np.asarray(affine_lps, float))
    voxels = points @ inverse[:3, :3].T + inverse[:3, 3]
    index = np.rint(voxels).astype(np.int64)
    if np.abs(voxels - index).max() > 1e-2 or (index < 0).any() or (index >= np.asarray(spatial_shape)[:3]).any():
        raise MultiRaterDataError(
            f"frame {ds.get('SOPInstanceUID', '?')} does not lie on the output volume's grid; fix: write DICOM-SEG "
            "from outputs in the source series' geometry (Invertd with orig_keys='image' before saving)"
        )
    return index
