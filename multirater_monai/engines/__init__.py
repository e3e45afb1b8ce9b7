"""Engines for multi-rater batches (MONAI SupervisedTrainer/SupervisedEvaluator subclasses)."""

from .evaluator import MultiRaterEvaluator
from .trainer import MultiRaterTrainer

__all__ = ["MultiRaterEvaluator", "MultiRaterTrainer"]
