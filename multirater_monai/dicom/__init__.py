"""DICOM in and out: series folders as inference input, DICOM-SEG (highdicom) as output."""

from .series import dicom_series_folders, frame_voxel_indices, is_dicom_series_dir, read_series, require_one_series
from .seg import write_dicom_seg

__all__ = ["is_dicom_series_dir", "dicom_series_folders", "read_series", "require_one_series", "frame_voxel_indices", "write_dicom_seg"]
