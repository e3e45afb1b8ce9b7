"""A small synthetic CT series written with pydicom, with the tags a real scanner series carries."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

ROWS, COLS = 48, 40
PIXEL_SPACING = (0.75, 0.8)  # (row spacing: between rows, column spacing: between columns) in mm
SLICE_THICKNESS = 2.5
ORIGIN = (-15.0, -20.0, 30.0)  # ImagePositionPatient of the first slice, LPS mm
RESCALE_SLOPE, RESCALE_INTERCEPT = 1.0, -1024.0


def hounsfield_phantom(num_slices: int, seed: int = 0) -> np.ndarray:
    """``(slices, rows, cols)`` Hounsfield units: air around a soft-tissue disc holding a brighter blob."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:ROWS, :COLS]
    body = ((r - ROWS / 2) ** 2 + (c - COLS / 2) ** 2) < (min(ROWS, COLS) / 2.2) ** 2
    volume = np.full((num_slices, ROWS, COLS), -1000.0)
    for z in range(num_slices):
        blob = ((r - ROWS / 2 - 3) ** 2 + (c - COLS / 2 + 2) ** 2) < (4 + 2 * z) ** 2
        volume[z][body] = 40.0
        volume[z][blob] = 150.0
    return volume + rng.normal(0, 5, volume.shape)


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # rows run feet-ward; slices step along the normal


def write_ct_series(folder: Path, num_slices: int = 4, seed: int = 0, shuffle_files: bool = True,
                    orientation: tuple = AXIAL) -> list[Path]:
    """Write ``num_slices`` CT slices (one file each, ``orientation`` as ImageOrientationPatient) into ``folder``.

    Returns the files in slice order. Files are named in a shuffled order so a reader must sort by
    position, not by name; slice k lies at ``ORIGIN + k * SLICE_THICKNESS * normal``.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    hu = hounsfield_phantom(num_slices, seed)
    stored = np.round((hu - RESCALE_INTERCEPT) / RESCALE_SLOPE).astype(np.uint16)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    order = np.random.default_rng(seed).permutation(num_slices) if shuffle_files else np.arange(num_slices)
    today = datetime.date(2024, 1, 2).strftime("%Y%m%d")
    files = []
    for z in range(num_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{int(order[z]):04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Synthetic", "SYN0001", "19700101", "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "ACC0001", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "multirater_monai tests", 3, z + 1
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if tuple(orientation) == AXIAL else "OTHER"]
        normal = np.cross(orientation[:3], orientation[3:])
        ds.ImagePositionPatient = [float(v) for v in np.asarray(ORIGIN) + z * SLICE_THICKNESS * normal]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = SLICE_THICKNESS
        ds.SliceLocation = float(np.dot(ds.ImagePositionPatient, normal))
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = RESCALE_SLOPE, RESCALE_INTERCEPT, "HU"
        ds.KVP, ds.WindowCenter, ds.WindowWidth = 120, 40, 400
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ROWS, COLS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = stored[z].tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files
