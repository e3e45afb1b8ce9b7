"""Losses that MONAI does not already have."""

from .bound_loss import BoundLoss, annotation_bounds

__all__ = ["BoundLoss", "annotation_bounds"]
