"""Dice + binary cross entropy over the present raters' channels, for one-output-per-rater networks.

MH-UNet gives one output channel per (structure, rater) and learns each from that rater's mask.
A missing rater's channel is all zeros in the rater stack, so it must not be a target: its weight
is 0 in both terms. The Dice is computed per channel over the whole batch (sums over every pixel
of every present sample, MONAI's ``batch=True``), so a slice on which a rater drew nothing does not
weigh as much as a whole lesion, then averaged over the channels that have any present sample.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..utils.errors import MultiRaterDataError

__all__ = ["PresentRaterDiceBCELoss"]


class PresentRaterDiceBCELoss(nn.Module):
    """``loss(logits (B, C, *sp), target (B, C, *sp), present (B, C) bool) -> (dice, bce)`` scalars.

    Args:
        smooth: added to the Dice numerator and denominator (keeps an all-empty channel finite).
    """

    def __init__(self, smooth: float = 1e-5) -> None:
        super().__init__()
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.shape != target.shape or present.shape != logits.shape[:2]:
            raise MultiRaterDataError(
                f"logits {tuple(logits.shape)}, target {tuple(target.shape)} and rater mask {tuple(present.shape)} "
                "must be (B, C, *sp), (B, C, *sp) and (B, C); fix: one output channel per rater channel."
            )
        weight = present.to(logits.dtype)
        if not bool(weight.sum() > 0):
            raise MultiRaterDataError("no rater annotated any sample of the batch; drop such samples from the datalist.")
        dims = tuple(range(2, logits.dim()))
        prob = torch.sigmoid(logits)
        inter = ((prob * target).sum(dims) * weight).sum(0)  # per channel, over the batch
        denom = ((prob + target).sum(dims) * weight).sum(0)
        used = weight.sum(0) > 0
        dice = (1.0 - (2.0 * inter + self.smooth) / (denom + self.smooth))[used].mean()
        bce_map = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dims)  # (B, C)
        bce = (bce_map * weight).sum() / weight.sum()
        return dice, bce
