"""Generalized Dice loss of binary maps, foreground and background, over the whole batch.

D-Persona's segmentation terms (eqs. 4, 5 and 9) are "Dice loss as [36]" (Pionono); the published
D-Persona implementation of that Dice is the generalized Dice loss of Sudre et al. (2017) computed
over the whole batch, with the background as a second class for a single-channel map. Both choices
matter on multi-rater data, where a rater's mask is often empty (17 % of lidc-phantom slices for the
first rater):

* a per-sample Dice of an empty target is ``1 - smooth / (sum p + smooth)``: its gradient is about
  ``smooth / (sum p)^2``, so an empty slice does not train at all;
* over the batch, the empty slice's false positives enter the batch's denominator, and the
  background class (weighted by 1 / |background|^2) penalises them even when the whole batch is empty.

The computation is MONAI's :class:`~monai.losses.GeneralizedDiceLoss` (``w_type="square"``); this
module only arranges each channel as a two-class problem over all pixels of the batch:
``(B, C, *sp)`` logits become ``(C, 2, B * prod(sp))`` probabilities, and MONAI's per-"sample" loss
is then one loss per channel (per rater in D-Persona's Stage II, eq. 9).

A ``weight`` ``(B, C)`` of 0/1 removes absent raters: their pixels count in neither class. A channel
absent from the whole batch has loss 0 and no gradient.
"""

from __future__ import annotations

import torch
from monai.losses import GeneralizedDiceLoss
from torch import nn

__all__ = ["BinaryGeneralizedDiceLoss"]


class BinaryGeneralizedDiceLoss(nn.Module):
    """``forward(logits (B, C, *sp), target (B, C, *sp), weight (B, C) | None)``.

    Args:
        reduction: ``"mean"`` or ``"sum"`` over the C channels, or ``"none"`` for a ``(C,)`` tensor.
        smooth_nr, smooth_dr: smoothing of MONAI's ``GeneralizedDiceLoss``.
    """

    def __init__(self, reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        self.reduction = reduction
        self.gdl = GeneralizedDiceLoss(
            w_type="square", smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=False, reduction="none"
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape.")
        prob = torch.sigmoid(logits)
        target = target.to(prob.dtype)
        background_prob, background_target = 1.0 - prob, 1.0 - target
        if weight is not None:
            if weight.shape != logits.shape[:2]:
                raise ValueError(f"weight {tuple(weight.shape)} must be (batch, channels) = {tuple(logits.shape[:2])}.")
            w = weight.to(prob.dtype).view(weight.shape + (1,) * (logits.dim() - 2))
            prob, target, background_prob, background_target = (
                prob * w, target * w, background_prob * w, background_target * w
            )
        channels = logits.shape[1]

        def two_class(fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:  # -> (C, 2, B * prod(sp))
            return torch.stack([fg, bg], dim=2).movedim(1, 0).movedim(2, 1).reshape(channels, 2, -1)

        loss = self.gdl(two_class(prob, background_prob), two_class(target, background_target)).view(channels)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
