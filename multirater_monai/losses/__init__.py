"""Losses that MONAI does not already have."""

from .binary_generalized_dice import BinaryGeneralizedDiceLoss
from .bound_loss import BoundLoss, annotation_bounds
from .present_rater_dice_bce import PresentRaterDiceBCELoss

__all__ = ["BinaryGeneralizedDiceLoss", "BoundLoss", "annotation_bounds", "PresentRaterDiceBCELoss"]
