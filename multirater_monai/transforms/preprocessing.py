"""The one preprocessing of every bundle: training, validation, evaluation and inference use it alike.

Before this component each bundle built its loading transforms in a 391-530 character ``$``
expression, and inference wrote its own (a bare ``LoadImaged``) that had drifted from training's:
a QUBIQ image ``(H, W, 1)`` loaded for training but crashed the network at inference. One
component, one ``_target_``, with every choice an argument that a config can override:

1. check the image file, read it channel-first, drop size-1 axes down to ``spatial_dims`` (QUBIQ's
   ``(H, W, 1)``, channel-first ``(1, H, W)`` files), refuse NaN/Inf naming the file;
2. when the item has a ``label`` (a list of per-rater files): read the rater stack on the image's
   grid and set ``rater_mask``; optionally rank the raters by area (the LIDC convention);
3. window the intensities to [0, 1] (``intensity_range``), optionally resize;
4. pad height and width to a multiple of the network's ``spatial_divisor`` (MONAI ``DivisiblePad``),
   so any image size works; with ``slice_volumes`` a 2D bundle also takes a volume ``(C, H, W, D)``
   (a DICOM series folder, a 3D NIfTI), padded in-plane only, which the inference runs slice by slice
   (:class:`multirater_monai.engines.SliceWiseInferer`);
5. float32 tensors.

It is deterministic and not a ``Compose`` (MONAI counts a ``Compose`` as random, and ``CacheDataset``
stops caching there), so a ``CacheDataset`` caches all of it and training reads each file once. It is
invertible: ``Invertd(keys=..., transform=@preprocessing, orig_keys="image")`` crops the padding and
restores the file's shape and affine, so inference writes its outputs in the input's geometry.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import (
    Compose,
    DivisiblePadd,
    EnsureChannelFirstd,
    EnsureTyped,
    InvertibleTransform,
    LoadImaged,
    MapTransform,
    Resized,
    ScaleIntensityRanged,
)

from ..data.dictionary import CheckFilesExistd, CheckFinited, EnsureSpatialDimsd, LoadRaterStackd, RankRatersByAread

__all__ = ["MultiRaterPreprocessing"]


class MultiRaterPreprocessing(MapTransform, InvertibleTransform):
    """Load, check, window, pad and type one multi-rater item (``image`` [+ ``label`` files]); see the module docstring.

    Args:
        spatial_dims: spatial dimensions the network works in (2 for slices); None keeps the file's axes.
        num_raters: expected label files per item (``R * K`` with K structures); None: as listed.
        rank_raters_by_area: reorder the raters by foreground area (smallest first), as the LIDC papers do.
        intensity_range: ``[a_min, a_max]`` mapped to [0, 1] with clipping; None keeps the intensities.
        image_size: resize image and rater stack to this spatial size (None: keep the size).
        spatial_divisor: pad height/width to a multiple of it (the network's ``spatial_divisor``).
        slice_volumes: with ``spatial_dims=2``, keep 3D volumes (to be run slice by slice) instead of refusing them.
        image_key, label_key, rater_mask_key: keys of the item.
    """

    def __init__(
        self,
        spatial_dims: int | None = 2,
        num_raters: int | None = None,
        rank_raters_by_area: bool = False,
        intensity_range: Sequence[float] | None = None,
        image_size: Sequence[int] | None = None,
        spatial_divisor: int = 1,
        slice_volumes: bool = False,
        image_key: str = "image",
        label_key: str = "label",
        rater_mask_key: str = "rater_mask",
    ) -> None:
        keys = [image_key, label_key]
        # a MapTransform over image and label, so that MONAI's Invertd can run it with missing keys
        super().__init__(keys, allow_missing_keys=True)
        steps: list[Any] = [
            CheckFilesExistd(image_key),
            LoadImaged(image_key, image_only=True),
            EnsureChannelFirstd(image_key),
            *([EnsureSpatialDimsd(image_key, spatial_dims, slice_volumes)] if spatial_dims is not None else []),
            CheckFinited(image_key),
            # the label is absent at inference: these steps then leave the item as it is
            LoadRaterStackd(label_key, rater_mask_key=rater_mask_key, image_key=image_key, num_raters=num_raters,
                            spatial_dims=spatial_dims, allow_missing_keys=True),
        ]
        if rank_raters_by_area:
            steps.append(RankRatersByAread(label_key, rater_mask_key=rater_mask_key, allow_missing_keys=True))
        if intensity_range is not None:
            a_min, a_max = (float(v) for v in intensity_range)
            steps.append(ScaleIntensityRanged(image_key, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True))
        if image_size is not None:
            resize = {"mode": ["bilinear", "nearest"], "allow_missing_keys": True}
            planar = Resized(keys, spatial_size=list(image_size), **resize)
            # -1: MONAI keeps that axis' size (the slices)
            steps.append(_InPlaned(keys, planar, Resized(keys, spatial_size=[*image_size, -1], **resize))
                         if slice_volumes else planar)
        if int(spatial_divisor) > 1:
            planar = DivisiblePadd(keys, k=int(spatial_divisor), allow_missing_keys=True)
            steps.append(_InPlaned(keys, planar, DivisiblePadd(keys, k=(int(spatial_divisor),) * 2 + (1,),
                                                               allow_missing_keys=True))
                         if slice_volumes else planar)
        steps.append(EnsureTyped(keys, dtype=torch.float32, allow_missing_keys=True))
        self.steps = Compose(steps)
        self.spatial_divisor = int(spatial_divisor)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        return self.steps(data)

    def inverse(self, data: Mapping[Hashable, Any]) -> dict:
        """Undo the padding, resizing and axis squeezing (``Invertd`` calls this on network outputs)."""
        return self.steps.inverse(data)


class _InPlaned(MapTransform, InvertibleTransform):
    """A spatial step of height and width only: ``planar`` on 2D items, ``volume`` (the same step, the slice
    axis untouched) on volumes run slice by slice, so a volume keeps its number of slices."""

    def __init__(self, keys, planar: MapTransform, volume: MapTransform) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.planar, self.volume = planar, volume

    def _step(self, data: Mapping[Hashable, Any]) -> MapTransform:
        first = next(data[key] for key in self.key_iterator(dict(data)))
        return self.volume if first.ndim == 4 else self.planar

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        return self._step(data)(data)

    def inverse(self, data: Mapping[Hashable, Any]) -> dict:
        return self._step(data).inverse(data)
