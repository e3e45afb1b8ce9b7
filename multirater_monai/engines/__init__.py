"""Engines for multi-rater batches (MONAI SupervisedTrainer/SupervisedEvaluator subclasses)."""

from .evaluation_table import format_settings_table, run_evaluation_table
from .evaluator import MultiRaterEvaluator
from .trainer import MultiRaterTrainer
from .two_stage import begin_stage2

__all__ = ["MultiRaterEvaluator", "MultiRaterTrainer", "format_settings_table", "run_evaluation_table", "begin_stage2"]
