"""Cumulative (iteration -> epoch) wrappers of the set metrics, following ``monai.metrics.DiceMetric``.

Each class computes one metric per image at every call and buffers it; ``aggregate()`` reduces
the buffer over images. Usage::

    metric = DiceMaxMetric()
    for batch in loader:
        metric(y_pred=model_probabilities, y=batch["label"], rater_mask=batch["rater_mask"])
    value = metric.aggregate().item()
    metric.reset()

``y_pred`` (B, S, *spatial) / ``y`` (B, R, *spatial) are batch-first tensors or lists of
channel-first tensors (the decollated evaluator output); ``rater_mask`` is a keyword, a (B, R)
tensor or a list of (R,) tensors matching the lists, or None (all raters present).

Reductions are MONAI's (:py:class:`monai.utils.MetricReduction`) and NaN-aware: NaN entries
(a missing rater's Dice, Dice_match with S < R) are left out, and a mean over nothing is NaN
(``do_metric_reduction`` would give 0, which reads as a real, terrible score). Values stay
float64 so that compat mode reproduces the published numbers to the last digit.

Under ``torchrun`` each process evaluates a shard of the images; ``get_buffer()`` / ``aggregate()``
gather every rank's rows (MONAI's ``Cumulative`` does too) and, where the calls passed each image's
dataset index (``sample_index=``, which :class:`~multirater_monai.engines.MultiRaterEvaluator`
records), put them into dataset order with each image once, so that the distributed table equals the
single-process one (:func:`multirater_monai.utils.distributed.gather_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import MetricReduction, convert_to_tensor, look_up_option

from ..utils.distributed import UNKNOWN_INDEX, gather_rows, is_distributed
from .set_metrics import (
    DEFAULT_THRESHOLDS,
    _check_compat,
    compute_set_metrics,
    dice_match,
    dice_max,
    dice_per_rater,
    generalized_energy_distance,
    soft_dice,
)

__all__ = [
    "SetMetric",
    "nan_aware_reduction",
    "GeneralizedEnergyDistanceMetric",
    "SoftDiceMetric",
    "DiceMaxMetric",
    "DiceMatchMetric",
    "DicePerRaterMetric",
    "DiceMeanMetric",
    "SetMetricsTable",
    "SCALAR_KEYS",
]

# per-image scalar entries of the full table, in the order of the papers' tables
SCALAR_KEYS = ("ged", "d_pa", "d_pp", "d_aa", "dice_soft", "dice_max", "dice_match")


def nan_aware_reduction(
    data: torch.Tensor, reduction: MetricReduction | str = MetricReduction.MEAN
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce a (batch, channel) metric buffer like ``monai.metrics.utils.do_metric_reduction``, ignoring NaN.

    Differences from MONAI's: the dtype is kept (float64 stays float64), and a mean over no valid
    value is NaN rather than 0. Returns ``(reduced, not_nans)``.
    """
    reduction = look_up_option(reduction, MetricReduction)
    not_nans = (~torch.isnan(data)).to(data.dtype)
    if reduction == MetricReduction.NONE:
        return data, not_nans
    if reduction == MetricReduction.MEAN:  # channel mean per image, then the mean over images
        per_image = torch.nanmean(data, dim=1)
        return torch.nanmean(per_image, dim=0), (~torch.isnan(per_image)).sum(dim=0).to(data.dtype)
    if reduction == MetricReduction.SUM:
        return torch.nansum(data, dim=(0, 1)), not_nans.sum(dim=(0, 1))
    if reduction == MetricReduction.MEAN_BATCH:
        return torch.nanmean(data, dim=0), not_nans.sum(dim=0)
    if reduction == MetricReduction.SUM_BATCH:
        return torch.nansum(data, dim=0), not_nans.sum(dim=0)
    if reduction == MetricReduction.MEAN_CHANNEL:
        return torch.nanmean(data, dim=1), not_nans.sum(dim=1)
    return torch.nansum(data, dim=1), not_nans.sum(dim=1)  # SUM_CHANNEL


def _split_rater_mask(rater_mask: Any, n_images: int) -> list[Any]:
    """One (R,) mask (or None) per channel-first image of a list input."""
    if rater_mask is None:
        return [None] * n_images
    if isinstance(rater_mask, (list, tuple)):
        masks = list(rater_mask)
    else:
        masks = list(convert_to_tensor(rater_mask, track_meta=False))  # rows of a (B, R) tensor
    if len(masks) != n_images:
        raise ValueError(f"got {len(masks)} rater masks for {n_images} images; pass one (R,) mask per image.")
    return masks


class SetMetric(CumulativeIterationMetric):
    """Shared plumbing: the ``rater_mask`` keyword, list inputs, NaN-aware reduction, dataset-ordered gathering."""

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        compat: str = "default",
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans
        self.compat = _check_compat(compat)

    def reset(self) -> None:
        super().reset()
        self._sample_indices: list[int] = []
        self._synced_indices: list[int] = []

    def __call__(self, y_pred: Any, y: Any = None, sample_index: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """As MONAI's, plus ``sample_index``: the dataset index of each image (a sequence or (B,) tensor), or None."""
        ret = super().__call__(y_pred, y, **kwargs)
        n_images = len(y_pred) if isinstance(y_pred, (list, tuple)) else int(y_pred.shape[0])
        if sample_index is None:
            self._sample_indices += [UNKNOWN_INDEX] * n_images
        else:
            indices = [int(i) for i in torch.as_tensor(sample_index).reshape(-1).tolist()]
            if len(indices) != n_images:
                raise ValueError(f"got {len(indices)} sample indices for {n_images} images; pass one per image.")
            self._sample_indices += indices
        return ret

    @property
    def sample_indices(self) -> list[int]:
        """The dataset index of each row of ``get_buffer()`` (gathered under ``torchrun``); -1 where unknown."""
        self._sync()
        return list(self._synced_indices) if is_distributed() else list(self._sample_indices)

    def _sync(self) -> None:
        if not is_distributed():
            super()._sync()
            return
        if self._synced:
            return
        # every rank takes part, also one without images (MONAI's Cumulative would skip the gather there and hang)
        local = None if self._buffers is None else [torch.stack(b, dim=0) for b in self._buffers]
        self._synced_tensors, self._synced_indices = gather_rows(local, self._sample_indices)
        self._synced = True

    def _compute_list(self, y_pred: Any, y: Any = None, rater_mask: Any = None, **kwargs: Any) -> Any:
        # MONAI's list path passes the same kwargs to every image; rater_mask differs per image,
        # so it is split alongside the lists. Images are computed one by one because channel-first
        # items of a list may differ in spatial size (3D volumes).
        if y is None:
            raise ValueError(f"{type(self).__name__} needs the rater labels y.")
        if len(y_pred) != len(y):
            raise ValueError(f"got {len(y_pred)} predictions but {len(y)} labels; pass one label stack per image.")
        masks = _split_rater_mask(rater_mask, len(y_pred))
        ret = [
            self._compute_tensor(
                p.detach().unsqueeze(0),
                t.detach().unsqueeze(0),
                rater_mask=None if m is None else convert_to_tensor(m, track_meta=False).unsqueeze(0),
                **kwargs,
            )
            for p, t, m in zip(y_pred, y, masks)
        ]
        if isinstance(ret[0], torch.Tensor):
            return torch.cat(ret, dim=0)
        return [torch.cat(items, dim=0) for items in zip(*ret)]

    def _reduce(self, data: torch.Tensor, reduction: MetricReduction | str | None) -> Any:
        f, not_nans = nan_aware_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f

    def aggregate(self, reduction: MetricReduction | str | None = None) -> Any:
        """Reduce the buffered per-image values (``reduction`` defaults to the constructor's)."""
        data = self.get_buffer()
        if isinstance(data, list):  # several buffers: the first holds the metric itself
            data = data[0]
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{type(self).__name__} has no buffered values: call it on a batch before aggregate().")
        return self._reduce(data, reduction)


class GeneralizedEnergyDistanceMetric(SetMetric):
    """Generalized energy distance per image (lower is better); also buffers ``d_pa``, ``d_pp``, ``d_aa``.

    ``aggregate()`` reduces GED; ``aggregate_terms()`` returns all four reduced values.
    See :py:func:`multirater_monai.metrics.generalized_energy_distance` for ``compat`` and ``unbiased``.
    """

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        compat: str = "default",
        unbiased: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans, compat=_check_compat(compat, unbiased))
        self.unbiased = unbiased

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, rater_mask: Any = None, **kwargs: Any
    ) -> Any:
        if y is None:
            raise ValueError("GeneralizedEnergyDistanceMetric needs the rater labels y.")
        terms = generalized_energy_distance(
            y_pred, y, rater_mask, return_terms=True, compat=self.compat, unbiased=self.unbiased
        )
        return [terms[k][:, None] for k in ("ged", "d_pa", "d_pp", "d_aa")]

    def aggregate_terms(self, reduction: MetricReduction | str | None = None) -> dict[str, Any]:
        """Reduced ``ged``, ``d_pa``, ``d_pp``, ``d_aa`` as a dict."""
        buffers = self.get_buffer()
        if buffers is None:
            raise ValueError("GeneralizedEnergyDistanceMetric has no buffered values: call it on a batch first.")
        return {k: self._reduce(b, reduction) for k, b in zip(("ged", "d_pa", "d_pp", "d_aa"), buffers)}


class SoftDiceMetric(SetMetric):
    """Dice_soft per image: Dice of the mean prediction vs the mean annotation over ``thresholds``."""

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        compat: str = "default",
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans, compat=compat)
        self.thresholds = tuple(thresholds)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, rater_mask: Any = None, **kwargs: Any
    ) -> Any:
        if y is None:
            raise ValueError("SoftDiceMetric needs the rater labels y.")
        return soft_dice(y_pred, y, rater_mask, thresholds=self.thresholds, compat=self.compat)[:, None]


class DiceMaxMetric(SetMetric):
    """Dice_max per image: mean over raters of the best Dice reached by any output (D-Persona Fig. 3)."""

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, rater_mask: Any = None, **kwargs: Any
    ) -> Any:
        if y is None:
            raise ValueError("DiceMaxMetric needs the rater labels y.")
        return dice_max(y_pred, y, rater_mask, compat=self.compat)[:, None]


class DiceMatchMetric(SetMetric):
    """Dice_match per image: mean Dice under the best one-to-one output-rater assignment (NaN if S < R)."""

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, rater_mask: Any = None, **kwargs: Any
    ) -> Any:
        if y is None:
            raise ValueError("DiceMatchMetric needs the rater labels y.")
        return dice_match(y_pred, y, rater_mask, compat=self.compat)[:, None]


class DicePerRaterMetric(SetMetric):
    """Dice_Ai: output i against rater i (S == R), or a single output against every rater (S == 1).

    Buffers (B, R) with NaN for missing raters. The default reduction ``"mean_batch"`` gives the
    per-rater means over the images that rater annotated, (R,): the Dice_A1..Dice_An columns.
    ``aggregate_mean()`` gives Dice_mean, the mean of those columns.
    """

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN_BATCH,
        get_not_nans: bool = False,
        compat: str = "default",
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans, compat=compat)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, rater_mask: Any = None, **kwargs: Any
    ) -> Any:
        if y is None:
            raise ValueError("DicePerRaterMetric needs the rater labels y.")
        return dice_per_rater(y_pred, y, rater_mask, compat=self.compat)

    def aggregate_mean(self) -> torch.Tensor:
        """Dice_mean: the mean over raters of each rater's mean Dice over images (a 0-dim tensor).

        This is the papers' Dice_mean (the average of the Dice_Ai columns); with missing raters it
        differs from averaging each image's raters first, which would weight raters unevenly.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("DicePerRaterMetric has no buffered values: call it on a batch first.")
        return torch.nanmean(torch.nanmean(data, dim=0))


class DiceMeanMetric(DicePerRaterMetric):
    """Dice_mean as a single number: ``aggregate()`` returns :py:meth:`DicePerRaterMetric.aggregate_mean`."""

    def aggregate(self, reduction: MetricReduction | str | None = None) -> Any:  # noqa: ARG002 - fixed meaning
        value = self.aggregate_mean()
        if self.get_not_nans:
            return value, (~torch.isnan(torch.nanmean(self.get_buffer(), dim=0))).sum().to(value.dtype)
        return value


class SetMetricsTable(SetMetric):
    """Every set metric at once, aggregated to the flat dict of the papers' tables.

    ``aggregate()`` returns ``{"ged", "d_pa", "d_pp", "d_aa", "dice_soft", "dice_max", "dice_match",
    "dice_<rater>" ..., "dice_mean"}`` as floats: each is the NaN-aware mean over images;
    ``dice_<rater>`` is the identity per-rater Dice (NaN, i.e. "N/A", unless S is 1 or R) and
    ``dice_mean`` the mean of those columns. ``per_image()`` returns the same keys per image.

    Args:
        thresholds: Dice_soft thresholds.
        compat: ``"default"`` or ``"dpersona"``.
        rater_names: names for the per-rater keys; default ``A1 .. AR``.
        unbiased: GED within-set means over distinct pairs only (see ``generalized_energy_distance``).
    """

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        compat: str = "default",
        rater_names: Sequence[str] | None = None,
        unbiased: bool = False,
    ) -> None:
        super().__init__(reduction=MetricReduction.MEAN, get_not_nans=False, compat=_check_compat(compat, unbiased))
        self.unbiased = unbiased
        self.thresholds = tuple(thresholds)
        self.rater_names = None if rater_names is None else [str(n) for n in rater_names]

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, rater_mask: Any = None, **kwargs: Any
    ) -> Any:
        if y is None:
            raise ValueError("SetMetricsTable needs the rater labels y.")
        out = compute_set_metrics(
            y_pred, y, rater_mask, thresholds=self.thresholds, compat=self.compat, unbiased=self.unbiased
        )
        return [out[k][:, None] for k in SCALAR_KEYS] + [out["dice_per_rater"]]

    def _table_buffers(self) -> list[torch.Tensor]:
        buffers = self.get_buffer()
        if buffers is None:
            raise ValueError("SetMetricsTable has no buffered values: call it on a batch before aggregate().")
        return buffers

    def _rater_keys(self, n_raters: int) -> list[str]:
        names = self.rater_names or [f"A{i + 1}" for i in range(n_raters)]
        if len(names) != n_raters:
            raise ValueError(f"rater_names has {len(names)} names but the labels have {n_raters} raters.")
        return [f"dice_{n}" for n in names]

    def aggregate(self, reduction: MetricReduction | str | None = None) -> dict[str, float]:  # noqa: ARG002
        """The flat summary dict (means over images, NaN-aware)."""
        buffers = self._table_buffers()
        summary = {k: float(torch.nanmean(b)) for k, b in zip(SCALAR_KEYS, buffers)}
        per_rater = torch.nanmean(buffers[-1], dim=0)
        for key, value in zip(self._rater_keys(per_rater.numel()), per_rater.tolist()):
            summary[key] = value
        summary["dice_mean"] = float(torch.nanmean(per_rater))
        return summary

    def per_image(self) -> list[dict[str, float]]:
        """One dict per buffered image with the same keys as :py:meth:`aggregate`."""
        buffers = self._table_buffers()
        per_rater = buffers[-1]
        rater_keys = self._rater_keys(per_rater.shape[1])
        rows = []
        for i in range(per_rater.shape[0]):
            row = {k: float(b[i, 0]) for k, b in zip(SCALAR_KEYS, buffers)}
            row.update(zip(rater_keys, per_rater[i].tolist()))
            present = [v for v in per_rater[i].tolist() if not math.isnan(v)]
            row["dice_mean"] = sum(present) / len(present) if present else float("nan")
            rows.append(row)
        return rows
