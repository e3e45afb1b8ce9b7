"""Saving the named outputs of one inference item, in the input file's geometry.

Each key is written as ``<output_dir>/<image name>_<key>.nii.gz``. The array is the output after
``Invertd`` (the input's spatial shape), the affine is the input file's own (``original_affine``, in
RAS as NIfTI wants it), and the layout is the input's: a one-channel map has exactly the input's shape
(QUBIQ's ``(H, W, 1)`` stays ``(H, W, 1)``), C channels add a last axis of length C. MONAI's
``SaveImage`` instead squeezes trailing size-1 axes and gives 2D outputs a third axis, so the files
would not line up with their inputs.

Masks (``mask_keys``: per-rater outputs, samples, consensus) are thresholded (``>= threshold``, as
MONAI's ``AsDiscrete``) and written as uint8; maps (agreement, calibrated) keep their probabilities
as float32. Each file is written to a temporary name and renamed, so no half-written file is left.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import orientation_ras_lps
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys

from ..utils.errors import MultiRaterDataError

__all__ = ["SaveOutputsd", "output_stem"]

_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".png")


def output_stem(source: str) -> str:
    """The name of an input file without folder and image suffix (``case01/image.nii.gz`` -> ``image``)."""
    name = os.path.basename(str(source))
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class SaveOutputsd(MapTransform):
    """Write ``d[key]`` for every key present (a mode may not produce every group); see the module docstring.

    Args:
        keys: the outputs to save.
        output_dir: folder of the files (created if needed).
        mask_keys: keys saved as binary uint8 masks.
        threshold: the mask threshold.
        enabled: False passes the item through (the bundle's ``output_format`` switch).
    """

    def __init__(self, keys: Sequence[str], output_dir: str, mask_keys: Sequence[str] = (),
                 threshold: float = 0.5, enabled: bool = True) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.output_dir = str(output_dir)
        self.mask_keys = set(mask_keys)
        self.threshold = float(threshold)
        self.enabled = bool(enabled)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d) if self.enabled else ():
            self.save(d[key], str(key))
        return d

    def save(self, value: torch.Tensor, key: str) -> str:
        """Write one channel-first output; returns the file's path."""
        if not isinstance(value, MetaTensor) or ImageMetaKey.FILENAME_OR_OBJ not in value.meta:
            raise MultiRaterDataError(
                f"output '{key}' carries no source file name; fix: keep the image's meta data through the "
                "post-processing (MetaTensor outputs, Invertd with orig_keys='image')."
            )
        meta = value.meta
        array = value.detach().cpu().numpy()
        if key in self.mask_keys:
            array = (array >= self.threshold).astype(np.uint8)
        else:
            array = array.astype(np.float32)
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
        affine = np.asarray(meta.get(MetaKeys.ORIGINAL_AFFINE, value.affine), dtype=np.float64)
        if meta.get(MetaKeys.SPACE) == SpaceKeys.LPS:  # DICOM / ITK readers: NIfTI stores RAS
            affine = orientation_ras_lps(affine)
        source = str(meta[ImageMetaKey.FILENAME_OR_OBJ]).rstrip(os.sep)  # a DICOM series folder: its name
        path = os.path.join(self.output_dir, f"{output_stem(source)}_{key}.nii.gz")
        os.makedirs(self.output_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.output_dir, prefix=".", suffix=".nii.gz")
        os.close(fd)
        try:
            nib.save(nib.Nifti1Image(array, affine), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path
