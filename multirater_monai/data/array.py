"""Array transforms over rater stacks: ``(R, H, W[, D])`` tensors with one binary channel per rater.

Each transform here does the work on one array; its dictionary twin in ``dictionary.py`` maps it
over the keys of a sample (MONAI's array/dictionary split). A ``rater_mask`` (R,) bool says which
raters annotated the sample; a missing rater has an all-zero channel and counts for nothing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, LoadImage, Randomizable, SqueezeDim, Transform
from monai.utils import TraceKeys, convert_to_tensor

from ..utils.errors import MultiRaterDataError

__all__ = [
    "CheckFilesExist",
    "CheckFinite",
    "EnsureSpatialDims",
    "LoadRaterStack",
    "RankRatersByArea",
    "FuseRaters",
    "FUSION_METHODS",
    "source_name",
]

FUSION_METHODS = ("majority", "mean", "random", "intersection", "union", "staple", "rater")


def source_name(img, default: str = "<in-memory array>") -> str:
    """The file an array was loaded from (MetaTensor ``filename_or_obj``), for error messages."""
    if isinstance(img, MetaTensor):
        name = img.meta.get("filename_or_obj")
        if name:
            return str(name)
    return default


def _as_mask(rater_mask, num_raters: int) -> torch.Tensor:
    if rater_mask is None:
        return torch.ones(num_raters, dtype=torch.bool)
    mask = torch.as_tensor(np.asarray(rater_mask) if not isinstance(rater_mask, torch.Tensor) else rater_mask)
    mask = mask.to(torch.bool).reshape(-1).cpu()
    if mask.numel() != num_raters:
        raise MultiRaterDataError(
            f"rater_mask has {mask.numel()} entries but the rater stack has {num_raters} channels; "
            "fix: give one mask entry per rater channel."
        )
    return mask


def _is_series(path) -> bool:
    from ..dicom.series import is_dicom_series_dir

    return is_dicom_series_dir(path)


class CheckFilesExist(Transform):
    """Raise ``MultiRaterDataError`` naming the first path (of a path or list of paths) that is not a file.

    Placed before ``LoadImage``, whose own error for a missing file does not say what to fix.
    ``None`` entries (missing raters) are skipped; a folder of DICOM files (one series, which MONAI's
    readers load as one volume) counts as an image file.
    """

    def __init__(self, what: str = "image") -> None:
        self.what = what

    def __call__(self, filenames):
        for f in [filenames] if filenames is None or isinstance(filenames, (str, os.PathLike)) else filenames:
            if f is not None and isinstance(f, (str, os.PathLike)) and not (os.path.isfile(f) or _is_series(f)):
                raise MultiRaterDataError(
                    f"{self.what} file {f} does not exist; fix: correct the path in the datalist "
                    "(paths are relative to the datalist's folder) or prepare the data set again."
                )
        return filenames


class CheckFinite(Transform):
    """Raise ``MultiRaterDataError`` naming the source file when an image holds NaN or Inf.

    A separate step (rather than part of ``LoadRaterStack``) so it guards any image key, and so
    pipelines that clean images on purpose (``NormalizeIntensity(nonzero=...)`` etc.) can place it.
    """

    def __call__(self, img, name: str | None = None):
        t = convert_to_tensor(img, track_meta=False)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise MultiRaterDataError(
                f"image {name or source_name(img)} contains {n_bad} NaN or infinite value(s); "
                "fix: replace them (e.g. by 0) in the file or drop this sample from the datalist."
            )
        return img


class EnsureSpatialDims(InvertibleTransform):
    """Drop size-1 spatial axes of a channel-first array until it has ``spatial_dims`` of them; invertible.

    QUBIQ stores 2D slices as ``(H, W, 1)`` volumes and some tools write a 2D slice channel-first as
    ``(1, H, W)``; with ``spatial_dims=2`` both load as ``(C, H, W)`` like every other 2D data set.
    Trailing axes go first, then leading ones; the affine is reduced with each axis (MONAI
    ``SqueezeDim``). The original spatial shape and affine are recorded, so :meth:`inverse` puts a
    network output ``(C', *spatial)`` back into the file's geometry (``Invertd`` after inference).

    With ``volume_slices`` a 2D network also takes volumes ``(C, H, W, D)`` (a CT series), which the
    inference then runs slice by slice along the last axis; without it a volume is refused.
    """

    def __init__(self, spatial_dims: int, volume_slices: bool = False) -> None:
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.volume_slices = bool(volume_slices) and spatial_dims == 2
        self._squeeze_last = SqueezeDim(dim=-1)
        self._squeeze_first = SqueezeDim(dim=1)

    def __call__(self, img, name: str | None = None):
        original_shape = tuple(img.shape[1:])
        original_affine = img.affine.clone() if isinstance(img, MetaTensor) else None
        while img.ndim - 1 > self.spatial_dims and (img.shape[-1] == 1 or img.shape[1] == 1):
            img = self._squeeze_last(img) if img.shape[-1] == 1 else self._squeeze_first(img)
        as_slices = self.volume_slices and img.ndim - 1 == self.spatial_dims + 1
        if img.ndim - 1 != self.spatial_dims and not as_slices:
            raise MultiRaterDataError(
                f"{name or source_name(img)} has channel-first shape {tuple(img.shape)}, which is not "
                f"{self.spatial_dims}D; fix: set spatial_dims={img.ndim - 1} or resample/slice the file"
                + (" (inference: --slice_volumes True runs a 2D bundle slice by slice)." if self.spatial_dims == 2 else ".")
            )
        if isinstance(img, MetaTensor):
            self.push_transform(img, orig_size=original_shape, extra_info={"affine": original_affine})
        return img

    def inverse(self, data):
        """Reshape ``(C, *spatial)`` back to ``(C, *original spatial shape)`` with the original affine."""
        transform = self.pop_transform(data)
        shape = tuple(transform[TraceKeys.ORIG_SIZE])
        out = data.reshape(data.shape[0], *shape)
        if isinstance(out, MetaTensor) and transform[TraceKeys.EXTRA_INFO].get("affine") is not None:
            out.affine = transform[TraceKeys.EXTRA_INFO]["affine"]
        return out


_warned_255 = [False]  # one warning per process for 0/255 masks


def check_label_values(values: torch.Tensor, filename: str) -> None:
    """A rater mask holds values in [0, 1] (binary, or soft and binarised by the threshold).

    0/255 masks (a common image-editor export) are accepted with one warning (binarised: > 0 is
    foreground); anything else (NaN/Inf, negative values, a multi-class map 0..K) stops with the file
    and the fix: coercing those to binary would silently train on another label than the rater's.
    """
    values = values.float()
    if not bool(torch.isfinite(values).all()):
        raise MultiRaterDataError(f"rater label file {filename} contains NaN or infinite values; "
                                  "fix: store a binary mask (0 = background, 1 = foreground).")
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return
    found = torch.unique(values)
    shown = ", ".join(f"{v:g}" for v in found[:8].tolist()) + (", ..." if found.numel() > 8 else "")
    if low >= 0.0 and set(found.tolist()) <= {0.0, 255.0}:
        if not _warned_255[0]:
            _warned_255[0] = True
            warnings.warn(f"rater label file {filename} holds 0/255: binarised (255 = foreground); further "
                          "0/255 files are binarised without this warning", stacklevel=2)
        return
    raise MultiRaterDataError(
        f"rater label file {filename} holds the values {{{shown}}}, not a binary mask; fix: store one binary "
        "mask per rater (0 = background, 1 = foreground; for a multi-class map, one data set per class, "
        "e.g. value == k), or 0/255."
    )


class LoadRaterStack(Transform):
    """Load per-rater label files into one ``(R, *spatial)`` float MetaTensor with values in {0, 1}.

    Args:
        num_raters: expected number of label files (raters; ``R * K`` for K structures, see the
            datalist's ``label_channels``); a shorter list is padded with missing raters, a longer
            one is an error. ``None`` takes the list as it is.
        spatial_dims: squeeze trailing size-1 axes to this many spatial dims (see ``EnsureSpatialDims``);
            ``None``: squeeze to the image's dims when ``spatial_shape`` is given, else keep as read.
        reader: passed to ``monai.transforms.LoadImage`` (``None``: chosen by file suffix).
        threshold: a voxel is foreground when its value is ``> threshold`` (binarises soft or 0/255 masks).
        dtype: output dtype.

    ``__call__(filenames, spatial_shape=None, image_name=None)``: ``filenames`` lists one path per
    rater, ``None`` for a missing rater (all-zero channel). Affine and meta come from the first
    present rater. Every rater's grid must equal ``spatial_shape`` (the loaded image's, when given)
    and the others'; otherwise ``MultiRaterDataError`` names the file.
    Use ``rater_mask_from(filenames)`` for the matching (R,) bool mask.
    """

    def __init__(
        self,
        num_raters: int | None = None,
        spatial_dims: int | None = None,
        reader=None,
        threshold: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.num_raters = num_raters
        self.spatial_dims = spatial_dims
        self.threshold = threshold
        self.dtype = dtype
        self._loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)

    def padded(self, filenames) -> list:
        """The file list with one entry per rater (padded with ``None`` up to ``num_raters``)."""
        if filenames is None or isinstance(filenames, (str, os.PathLike)):
            filenames = [filenames]
        filenames = [None if f is None else str(f) for f in filenames]
        if self.num_raters is not None:
            if len(filenames) > self.num_raters:
                raise MultiRaterDataError(
                    f"{len(filenames)} rater files given but num_raters={self.num_raters} "
                    f"(first: {next((f for f in filenames if f), None)}); fix: set num_raters to the data set's "
                    "rater count or drop the extra files from the datalist."
                )
            filenames = filenames + [None] * (self.num_raters - len(filenames))
        return filenames

    def rater_mask_from(self, filenames) -> torch.Tensor:
        """(R,) bool: True where a rater file is given."""
        return torch.tensor([f is not None for f in self.padded(filenames)], dtype=torch.bool)

    def _read(self, filename: str, target_ndim: int | None):
        if not os.path.isfile(filename):
            raise MultiRaterDataError(
                f"rater label file {filename} does not exist; fix: correct the path in the datalist "
                "or set this rater to null (missing)."
            )
        try:
            lab = self._loader(filename)
        except Exception as e:  # noqa: BLE001 - any reader failure is an unreadable file
            raise MultiRaterDataError(
                f"rater label file {filename} cannot be read ({type(e).__name__}: {e}); "
                "fix: re-export it as NIfTI (.nii.gz) or replace the file."
            ) from e
        if lab.shape[0] != 1:
            raise MultiRaterDataError(
                f"rater label file {filename} has {lab.shape[0]} channels; fix: store one binary mask per rater file."
            )
        check_label_values(lab.as_tensor(), filename)
        if target_ndim is not None:
            while lab.ndim - 1 > target_ndim and lab.shape[-1] == 1:
                lab = SqueezeDim(dim=-1)(lab)
        return lab

    def __call__(self, filenames, spatial_shape: Sequence[int] | None = None, image_name: str | None = None):
        filenames = self.padded(filenames)
        about = f" for image {image_name}" if image_name else ""
        if not any(f is not None for f in filenames):
            raise MultiRaterDataError(
                f"no rater annotated this sample{about} (all rater entries are null); "
                "fix: drop the entry from the datalist or add at least one rater file."
            )
        target_ndim = len(spatial_shape) if spatial_shape is not None else self.spatial_dims
        expected = tuple(int(s) for s in spatial_shape) if spatial_shape is not None else None
        first, first_name = None, None
        channels: list[torch.Tensor | None] = []
        for r, f in enumerate(filenames):
            if f is None:
                channels.append(None)
                continue
            lab = self._read(f, target_ndim)
            shape = tuple(lab.shape[1:])
            if expected is None:
                expected = shape
            elif shape != expected:
                if spatial_shape is not None:
                    ref = f"image {image_name}" if image_name else "the image"
                else:
                    ref = f"rater file {first_name}"
                raise MultiRaterDataError(
                    f"rater {r} label file {f} has spatial shape {shape} but {ref} has {expected}; "
                    "fix: resample the label onto the image grid (same size and spacing)."
                )
            if first is None:
                first, first_name = lab, f
            channels.append(lab.as_tensor()[0] > self.threshold)
        zeros = torch.zeros(expected, dtype=torch.bool)
        stack = torch.stack([zeros if c is None else c for c in channels]).to(self.dtype)
        meta = dict(first.meta)  # holds the affine too
        meta["filename_or_obj"] = first_name
        return MetaTensor(stack, meta=meta)


class RankRatersByArea(Transform):
    """Reorder raters by foreground area, smallest first (the LIDC convention of the papers:
    A1 most conservative ... A4 most liberal).

    Present raters come first, ranked by area; missing raters follow in their original order.
    Ties keep the original order (stable sort). Never applied by default: rater identity matters
    for personalised methods, so ranking is an explicit choice.

    ``__call__(rater_stack, rater_mask=None) -> (ranked_stack, ranked_mask, order)`` where
    ``order[i]`` is the original index of the rater now at position ``i``.
    """

    def order(self, rater_stack, rater_mask=None) -> list[int]:
        stack = convert_to_tensor(rater_stack, track_meta=False)
        mask = _as_mask(rater_mask, stack.shape[0])
        area = (stack.reshape(stack.shape[0], -1) > 0).sum(dim=1).tolist()
        # key: present raters first, then by area, then by original index (stability)
        return sorted(range(stack.shape[0]), key=lambda r: (not bool(mask[r]), area[r] if mask[r] else 0, r))

    def __call__(self, rater_stack, rater_mask=None):
        order = self.order(rater_stack, rater_mask)
        mask = _as_mask(rater_mask, rater_stack.shape[0])
        index = torch.as_tensor(order, dtype=torch.long)
        return rater_stack[index], mask[index], order


class FuseRaters(Randomizable, Transform):
    """Fuse the present raters of a ``(R, *spatial)`` stack into one ``(1, *spatial)`` label.

    Methods (only raters with ``rater_mask`` True count):

    - ``"majority"``: foreground where strictly more than half of the present raters say so
      (``2 * votes > n_present``); an exact tie (2 of 4) is background.
    - ``"mean"``: the fraction of present raters voting foreground (a soft label in [0, 1]).
    - ``"random"``: one present rater chosen uniformly per call (seed with ``set_random_state``).
    - ``"intersection"`` / ``"union"``: foreground where all / any present raters say so.
    - ``"staple"``: SimpleITK ``STAPLEImageFilter`` over the present raters. Output is its
      foreground probability map thresholded at 0.5 (strictly ``> 0.5``), or the probability map
      itself with ``staple_probabilities=True``. One present rater is returned as it is; when no
      present rater marks any voxel the result is empty (STAPLE is undefined there).
    - ``"rater"``: rater ``rater_index``; ``MultiRaterDataError`` when that rater is missing.

    Returns a float MetaTensor (meta of the input kept).
    """

    def __init__(
        self,
        method: str = "majority",
        rater_index: int | None = None,
        staple_probabilities: bool = False,
        staple_max_iterations: int = 100,
    ) -> None:
        if method not in FUSION_METHODS:
            raise ValueError(f"unknown fusion method '{method}'; choose one of {FUSION_METHODS}.")
        if method == "rater" and rater_index is None:
            raise ValueError("method='rater' needs rater_index.")
        self.method = method
        self.rater_index = rater_index
        self.staple_probabilities = staple_probabilities
        self.staple_max_iterations = staple_max_iterations
        self._choice = 0

    def randomize(self, present: Sequence[int]) -> None:
        self._choice = int(present[self.R.randint(len(present))]) if self.method == "random" else 0

    def _staple(self, votes: torch.Tensor) -> torch.Tensor:
        import SimpleITK as sitk

        n = votes.shape[0]
        if n == 1:
            return votes[0].float()
        if not bool(votes.any()):
            return torch.zeros(votes.shape[1:])
        images = [sitk.GetImageFromArray(v.numpy().astype(np.uint8)) for v in votes]
        staple = sitk.STAPLEImageFilter()
        staple.SetForegroundValue(1.0)
        staple.SetMaximumIterations(self.staple_max_iterations)
        prob = torch.from_numpy(sitk.GetArrayFromImage(staple.Execute(images)).astype(np.float32))
        # STAPLE divides by zero on degenerate input (e.g. raters that all mark every voxel);
        # the votes' mean is the fair stand-in there
        bad = ~torch.isfinite(prob)
        if bool(bad.any()):
            prob[bad] = votes.float().mean(0)[bad]
        return prob if self.staple_probabilities else (prob > 0.5).float()

    def __call__(self, rater_stack, rater_mask=None, randomize: bool = True):
        stack = convert_to_tensor(rater_stack, track_meta=False)
        mask = _as_mask(rater_mask, stack.shape[0])
        present = torch.nonzero(mask).flatten().tolist()
        name = source_name(rater_stack, default="this sample")
        if not present:
            raise MultiRaterDataError(
                f"no present rater to fuse for {name} (rater_mask all False); fix: drop the sample or add a rater."
            )
        if randomize:
            self.randomize(present)
        votes = stack[present] > 0
        m = self.method
        if m == "majority":
            fused = (2 * votes.sum(0) > len(present)).float()
        elif m == "mean":
            fused = votes.float().mean(0)
        elif m == "intersection":
            fused = votes.all(0).float()
        elif m == "union":
            fused = votes.any(0).float()
        elif m == "random":
            fused = (stack[self._choice] > 0).float()
        elif m == "staple":
            fused = self._staple(votes.cpu()).to(stack.device)
        else:  # "rater"
            k = self.rater_index
            if not 0 <= k < stack.shape[0] or not bool(mask[k]):
                why = "does not exist" if not 0 <= k < stack.shape[0] else "is missing"
                raise MultiRaterDataError(
                    f"rater {k} {why} for {name} (present raters: {present}); fix: choose a present rater, "
                    "filter the datalist to samples that rater annotated, or use another fusion method."
                )
            fused = (stack[k] > 0).float()
        fused = fused.unsqueeze(0)
        if isinstance(rater_stack, MetaTensor):
            return MetaTensor(fused, meta=dict(rater_stack.meta))
        return fused
