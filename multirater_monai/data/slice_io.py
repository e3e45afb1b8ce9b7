"""Writing 2D samples as NIfTI, shared by the preparers that cut or convert user data (folder, riga, lidc, qubiq).

One image file per sample: ``(H, W)`` for one channel, ``(H, W, 1, C)`` for C channels (RGB, several
MR contrasts). MONAI's NIfTI reader takes the 4th axis of a 4D file as the channel axis, so
``MultiRaterPreprocessing(spatial_dims=2)`` loads it as ``(C, H, W)`` (the size-1 third axis is
dropped), and the datalist validator accepts it against ``(H, W)`` rater masks.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["save_nifti", "save_rater_masks", "channels_last_image", "slice_affine"]


def channels_last_image(array: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """``array`` with its channels (if any) as the 4th axis of a ``(H, W, 1, C)`` array; 2D stays 2D."""
    if channel_axis is None:
        return array
    moved = np.moveaxis(array, channel_axis, -1)
    if moved.ndim != 3:
        raise ValueError(f"expected (H, W) plus one channel axis, got shape {array.shape}.")
    return moved[:, :, None, :]


def slice_affine(affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Affine of the 2D slice ``index`` along ``axis`` of a 3D volume: the two kept axes stay in
    order, the sliced axis becomes the third column, and the origin moves to the slice."""
    affine = np.asarray(affine, dtype=float)
    kept = [a for a in range(3) if a != axis]
    out = np.eye(4)
    out[:3, 0] = affine[:3, kept[0]]
    out[:3, 1] = affine[:3, kept[1]]
    out[:3, 2] = affine[:3, axis]
    out[:3, 3] = affine[:3, 3] + index * affine[:3, axis]
    return out


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write ``array`` as a gzipped NIfTI in one write (mm units).

    One ``gzip.compress`` instead of nibabel's streamed gzip (3x faster for small files); ``mtime=0``
    keeps the bytes identical from run to run.
    """
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm")
    Path(path).write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def save_rater_masks(root: str | os.PathLike, rel_paths: list[str], masks: list, affine: np.ndarray | None = None) -> list:
    """Write each present rater's mask (uint8) to ``root/rel_paths[r]``; return the datalist's ``label``
    list: the relative path per rater, ``None`` for a rater without a mask."""
    labels = []
    for rel, mask in zip(rel_paths, masks):
        if mask is None:
            labels.append(None)
            continue
        save_nifti(os.path.join(root, rel), np.asarray(mask).astype(np.uint8), affine)
        labels.append(rel)
    return labels
