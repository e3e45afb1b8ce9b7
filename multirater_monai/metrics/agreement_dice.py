"""AVAP's two soft-Dice figures (Guo et al., Sec. IV-B2 and Tables II-V): 'Mean Voting' and 'Average'.

Soft Dice (Ji et al., MR-Net): at each threshold t in (0.1, 0.3, 0.5, 0.7, 0.9) threshold the
prediction and the reference, take the hard Dice, and average over the thresholds.

- **'Mean Voting'**: the calibrated map (AVM output, one channel per structure) against the mean
  voting of the present raters of that structure. It is :func:`~.set_metrics.soft_dice` of a
  single prediction, per structure.
- **'Average'**: each rater-specific prediction (APM output r) against rater r's own mask, soft
  Dice per rater, then the mean over raters. Against a binary mask every threshold sees the same
  reference, so only the prediction is thresholded; with ``thresholds=(0.5,)`` this is the mean
  identity Dice (``Dice_mean``).

Functional core, cumulative metrics and thin ignite handlers, as in the rest of this package.
Conventions (Dice of two empty masks is 1; missing raters dropped / NaN) are the package's defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.utils import MetricReduction

from multirater_monai.utils.errors import MultiRaterDataError

from .cumulative import SetMetric
from .handlers import SetMetricHandler, from_engine_with_rater_mask
from .set_metrics import DEFAULT_THRESHOLDS, prepare_sets, soft_dice

__all__ = [
    "mean_voting_dice",
    "average_rater_dice",
    "MeanVotingDiceMetric",
    "AverageRaterDiceMetric",
    "MeanVotingDice",
    "AverageRaterDice",
]


def mean_voting_dice(
    calibrated: Any, label: Any, rater_mask: Any | None = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> torch.Tensor:
    """'Mean Voting', ``(B, K)``: soft Dice of calibrated map k vs the mean of structure k's present raters.

    Args:
        calibrated: (B, K, *spatial) probabilities in [0, 1], one map per structure.
        label: (B, K * R, *spatial) binary rater stack, structure-major.
        rater_mask: (B, K * R) bool; None = every rater present.
    """
    calibrated = torch.as_tensor(calibrated)
    label = torch.as_tensor(label)
    num_structures = calibrated.shape[1] if calibrated.ndim >= 2 else 0
    if num_structures < 1 or label.ndim < 2 or label.shape[1] % num_structures:
        raise MultiRaterDataError(
            f"calibrated map {tuple(calibrated.shape)} and rater stack {tuple(label.shape)} do not pair up: expected "
            "(B, K, *spatial) and (B, K * R, *spatial); fix: pass one calibrated map per structure."
        )
    raters = label.shape[1] // num_structures
    mask = None if rater_mask is None else torch.as_tensor(rater_mask).reshape(label.shape[0], -1)
    values = [
        soft_dice(calibrated[:, k:k + 1], label[:, k * raters:(k + 1) * raters],
                  None if mask is None else mask[:, k * raters:(k + 1) * raters], thresholds)
        for k in range(num_structures)
    ]
    return torch.stack(values, dim=1)


def average_rater_dice(
    pred: Any, label: Any, rater_mask: Any | None = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> torch.Tensor:
    """Soft Dice of prediction channel c vs rater channel c, ``(B, C)`` (NaN for a missing rater).

    'Average' is the mean over the raters (columns) of this, see :class:`AverageRaterDiceMetric`.
    ``pred`` (B, C, *spatial) probabilities, ``label`` (B, C, *spatial) binary, ``rater_mask`` (B, C).
    """
    if len(thresholds) == 0:
        raise ValueError("thresholds must hold at least one value, e.g. (0.1, 0.3, 0.5, 0.7, 0.9).")
    pred, label, mask = prepare_sets(pred, label, rater_mask)  # (B, C, N) float, (B, C, N) bool, (B, C)
    if pred.shape[1] != label.shape[1]:
        raise MultiRaterDataError(
            f"'Average' pairs output c with rater c: got {pred.shape[1]} outputs for {label.shape[1]} raters; "
            "fix: pass the personalized outputs (one per rater channel), not samples."
        )
    t = torch.as_tensor(thresholds, dtype=pred.dtype, device=pred.device)[None, None, :, None]
    pred_t = pred[:, :, None, :] > t  # (B, C, T, N)
    inter = (pred_t & label[:, :, None, :]).sum(-1).double()
    denom = (pred_t.sum(-1) + label.sum(-1, keepdim=True)).double()
    dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(inter)).mean(dim=2)
    return dice.masked_fill(~mask, float("nan"))


class MeanVotingDiceMetric(SetMetric):
    """'Mean Voting' per image and structure, buffered ``(B, K)``; ``aggregate()`` averages both (NaN-aware)."""

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.thresholds = tuple(thresholds)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, rater_mask: Any = None, **kwargs: Any
    ) -> Any:
        if y is None:
            raise ValueError("MeanVotingDiceMetric needs the rater labels y.")
        return mean_voting_dice(y_pred, y, rater_mask, self.thresholds)


class AverageRaterDiceMetric(SetMetric):
    """'Average': buffers :func:`average_rater_dice` ``(B, C)``; ``aggregate()`` is the mean over raters of each
    rater's mean over the images it annotated (the papers' column mean, as ``DiceMeanMetric``)."""

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, get_not_nans: bool = False) -> None:
        super().__init__(reduction=MetricReduction.MEAN_BATCH, get_not_nans=get_not_nans)
        self.thresholds = tuple(thresholds)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, rater_mask: Any = None, **kwargs: Any
    ) -> Any:
        if y is None:
            raise ValueError("AverageRaterDiceMetric needs the rater labels y.")
        return average_rater_dice(y_pred, y, rater_mask, self.thresholds)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> Any:  # noqa: ARG002 - fixed meaning
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("AverageRaterDiceMetric has no buffered values: call it on a batch first.")
        columns = torch.nanmean(data, dim=0)
        value = torch.nanmean(columns)
        return (value, (~torch.isnan(columns)).sum().to(value.dtype)) if self.get_not_nans else value


class MeanVotingDice(SetMetricHandler):
    """Handler for 'Mean Voting'; reads ``calibrated``, ``label``, ``rater_mask`` from the evaluator output."""

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        output_transform: Callable | None = None,
        save_details: bool = True,
        calibrated_key: str = "calibrated",
    ) -> None:
        super().__init__(
            metric_fn=MeanVotingDiceMetric(thresholds=thresholds),
            output_transform=output_transform or from_engine_with_rater_mask(pred_key=calibrated_key),
            save_details=save_details,
        )


class AverageRaterDice(SetMetricHandler):
    """Handler for 'Average'; reads ``personalized``, ``label``, ``rater_mask`` from the evaluator output."""

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        output_transform: Callable | None = None,
        save_details: bool = True,
        personalized_key: str = "personalized",
    ) -> None:
        super().__init__(
            metric_fn=AverageRaterDiceMetric(thresholds=thresholds),
            output_transform=output_transform or from_engine_with_rater_mask(pred_key=personalized_key),
            save_details=save_details,
        )
