"""Losses that MONAI does not already have."""

from .bound_loss import BoundLoss, annotation_bounds
from .present_rater_dice_bce import PresentRaterDiceBCELoss

__all__ = ["BoundLoss", "annotation_bounds", "PresentRaterDiceBCELoss"]
