"""Bound-constrained loss of D-Persona (eq. 5): the K prior samples must span the raters' bounds.

From K sampled logit maps ``(B, K, *sp)`` it takes the pixel-wise intersection (minimum over the
samples) and union (maximum), and compares them by Dice with the intersection and union of the
PRESENT annotations:

    L_bound = Dice(min_k P_k, A_inter) + Dice(max_k P_k, A_union)

The minimum/maximum is taken over LOGITS and the Dice loss applies the sigmoid afterwards; since the
sigmoid is monotone, ``sigmoid(min_k l_k) == min_k sigmoid(l_k)`` exactly, so this equals the
min/max of probabilities. The Dice is the one of eq. 4, by default
:class:`~multirater_monai.losses.BinaryGeneralizedDiceLoss` (batch-level, so empty bounds train).
min/max is differentiable almost everywhere (the gradient
goes to the sample that attains it), which is what pushes individual samples toward the bounds.

Missing raters (``rater_mask`` False) take no part: they count as 1 in the intersection and 0 in
the union.
"""

from __future__ import annotations

import torch
from torch import nn

from ..utils.errors import MultiRaterDataError
from .binary_generalized_dice import BinaryGeneralizedDiceLoss

__all__ = ["BoundLoss", "annotation_bounds"]


def annotation_bounds(label: torch.Tensor, rater_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union ``(B, 1, *sp)`` of the present raters of a ``(B, R, *sp)`` stack."""
    if rater_mask is None:
        rater_mask = torch.ones(label.shape[:2], dtype=torch.bool, device=label.device)
    rater_mask = rater_mask.to(device=label.device, dtype=torch.bool)
    if not bool(rater_mask.any(1).all()):
        raise MultiRaterDataError(
            "a sample has no annotating rater (rater_mask all False); drop such samples from the datalist."
        )
    present = rater_mask.view(rater_mask.shape + (1,) * (label.dim() - 2))
    inter = torch.where(present, label, torch.ones_like(label)).amin(1, keepdim=True)
    union = torch.where(present, label, torch.zeros_like(label)).amax(1, keepdim=True)
    return inter, union


class BoundLoss(nn.Module):
    """D-Persona bound loss: Dice of the samples' intersection/union vs the annotations'.

    Args:
        dice: loss ``(logits (B, 1, *sp), target (B, 1, *sp)) -> scalar`` with the sigmoid inside;
            default :class:`BinaryGeneralizedDiceLoss`.

    ``forward(sample_logits (B, K, *sp), label (B, R, *sp), rater_mask (B, R) | None)`` returns the
    scalar ``L_inter + L_union``; :meth:`terms` returns the two parts.
    """

    def __init__(self, dice: nn.Module | None = None) -> None:
        super().__init__()
        self.dice = dice if dice is not None else BinaryGeneralizedDiceLoss()

    def terms(
        self, sample_logits: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if sample_logits.shape[0] != label.shape[0] or sample_logits.shape[2:] != label.shape[2:]:
            raise ValueError(
                f"sample logits {tuple(sample_logits.shape)} and rater stack {tuple(label.shape)} must share "
                "batch and spatial sizes."
            )
        a_inter, a_union = annotation_bounds(label, rater_mask)
        p_inter = sample_logits.amin(1, keepdim=True)
        p_union = sample_logits.amax(1, keepdim=True)
        return self.dice(p_inter, a_inter), self.dice(p_union, a_union)

    def forward(
        self, sample_logits: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        inter, union = self.terms(sample_logits, label, rater_mask)
        return inter + union
