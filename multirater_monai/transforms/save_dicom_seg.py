"""Saving the outputs of one DICOM series as a DICOM-SEG beside the NIfTI files (``--output_format dicom-seg``).

Segments, in order: one per channel of each key of ``keys`` (the raters' personalized masks, named after
the raters), then each key of ``map_keys`` (the agreement map) thresholded at ``threshold``. The
outputs must be in the loaded series' geometry (after ``Invertd``); each source frame's pixels are read
from the output volume at their own positions (:func:`multirater_monai.dicom.frame_voxel_indices`), so
the SEG frames lie exactly on the source frames whatever axis order the reader used.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import orientation_ras_lps
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys, ensure_tuple

from ..utils.errors import MultiRaterDataError
from .save_outputs import output_stem

__all__ = ["SaveDicomSegd"]


class SaveDicomSegd(MapTransform):
    """Write ``<output_dir>/<series folder name>_seg.dcm`` for an item loaded from a DICOM series folder.

    Args:
        keys: per-channel masks, one segment per channel (``"personalized"``); absent keys are skipped.
        output_dir: folder of the SEG files.
        segment_names: ``{key: [name per channel]}`` (the rater names); default ``<key>_<i>``.
        map_keys: maps saved as one segment each, thresholded (``"agreement"``, ``"calibrated"``); the
            segment is named ``"<key> >= <threshold>"`` (one per structure, ``"<key> s<k> >= ..."``, with several).
        threshold: probability threshold of masks and maps (``>=``, as the NIfTI masks).
        algorithm_name, algorithm_version: the algorithm identification of every segment (the bundle; the
            version defaults to multirater_monai's).
        enabled: False passes the item through (the bundle's ``output_format`` switch).
    """

    def __init__(self, keys: Sequence[str], output_dir: str, segment_names: Mapping[str, Sequence[str]] | None = None,
                 map_keys: Sequence[str] = (), threshold: float = 0.5, algorithm_name: str = "multirater_monai",
                 algorithm_version: str | None = None, enabled: bool = True) -> None:
        # one MapTransform over masks and maps: a bundle with maps only (a consensus) has no mask key
        super().__init__([*ensure_tuple(keys), *ensure_tuple(map_keys)], allow_missing_keys=True)
        self.output_dir = str(output_dir)
        self.segment_names = dict(segment_names or {})
        self.map_keys = list(ensure_tuple(map_keys))
        self.threshold = float(threshold)
        from .. import __version__

        self.algorithm_name = str(algorithm_name)
        self.algorithm_version = str(algorithm_version or __version__)
        self.enabled = bool(enabled)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        volumes, labels = [], []
        for key in self.key_iterator(d):
            value = d[key]
            array = value.detach().cpu().numpy() >= self.threshold
            if key in self.map_keys:
                volumes.append(array)  # one segment per structure
                labels += ([f"{key} >= {self.threshold:g}"] if array.shape[0] == 1 else
                           [f"{key} s{k + 1} >= {self.threshold:g}" for k in range(array.shape[0])])
                continue
            names = list(self.segment_names.get(key, [f"{key}_{i + 1}" for i in range(array.shape[0])]))
            if len(names) != array.shape[0]:
                raise MultiRaterDataError(f"output '{key}' has {array.shape[0]} channels but {len(names)} segment "
                                          f"names {names}; fix: give one name per channel (the bundle's rater_names)")
            volumes.append(array)
            labels += names
        if not volumes:
            return d
        self.save(d[next(self.key_iterator(d))], np.concatenate(volumes, axis=0), labels)
        return d

    def save(self, reference: torch.Tensor, masks: np.ndarray, labels: list[str]) -> str:
        """``masks`` (segments, *spatial) in the geometry of ``reference``'s meta -> one SEG file; returns its path."""
        from ..dicom import frame_voxel_indices, read_series, write_dicom_seg

        source = reference.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(reference, MetaTensor) else None
        if not source or not os.path.isdir(str(source)):
            raise MultiRaterDataError(
                f"DICOM-SEG output needs a DICOM series folder as input, got {source or 'an in-memory image'}; fix: "
                "pass --output_format nifti for NIfTI/NRRD inputs, or a folder of DICOM series as --input_dir"
            )
        meta = reference.meta
        affine = np.asarray(meta.get(MetaKeys.ORIGINAL_AFFINE, reference.affine), dtype=np.float64)
        if meta.get(MetaKeys.SPACE, SpaceKeys.RAS) != SpaceKeys.LPS:  # DICOM positions are LPS
            affine = orientation_ras_lps(affine)
        if masks.ndim == 3:  # a 2D output of a one-frame series: its frame axis was squeezed away
            masks = masks[..., None]
        datasets = read_series(str(source))
        frames = np.empty((masks.shape[0], len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), bool)
        for f, ds in enumerate(datasets):
            i, j, k = np.moveaxis(frame_voxel_indices(ds, affine, masks.shape[1:]), -1, 0)
            frames[:, f] = masks[:, i, j, k]
        path = os.path.join(self.output_dir, f"{output_stem(str(source).rstrip(os.sep))}_seg.dcm")
        description = f"{self.algorithm_name}: {', '.join(labels)}"
        return write_dicom_seg(path, datasets, frames, labels, self.algorithm_name, self.algorithm_version,
                               series_description=description)
