"""Engines for multi-rater batches (MONAI SupervisedTrainer/SupervisedEvaluator subclasses) and their handlers."""

from .atomic_checkpoint_saver import AtomicCheckpointSaver
from .data_parallel import TrainingObjective, objective_ddp
from .distributed import (
    backend_for,
    barrier,
    broadcast_network,
    destroy_distributed,
    distributed_device,
    ensure_dataset_in_turn,
    init_distributed,
    rank_zero_handlers,
)
from .evaluation_table import EvaluationTable, format_settings_table, run_evaluation_table
from .evaluator import MultiRaterEvaluator
from .last_epoch_validation import LastEpochValidationHandler
from .loss_logging import LossTermsStatsHandler, loss_terms
from .resume import ResumeCheckpoint, load_training_state
from .run_summary import InferenceSummaryHandler
from .slice_inferer import SliceWiseInferer
from .trainer import MultiRaterTrainer
from .two_stage import begin_stage

__all__ = [
    "MultiRaterEvaluator",
    "MultiRaterTrainer",
    "LossTermsStatsHandler",
    "InferenceSummaryHandler",
    "SliceWiseInferer",
    "loss_terms",
    "EvaluationTable",
    "format_settings_table",
    "run_evaluation_table",
    "begin_stage",
    "AtomicCheckpointSaver",
    "LastEpochValidationHandler",
    "ResumeCheckpoint",
    "load_training_state",
    "TrainingObjective",
    "objective_ddp",
    "backend_for",
    "barrier",
    "broadcast_network",
    "ensure_dataset_in_turn",
    "destroy_distributed",
    "distributed_device",
    "init_distributed",
    "rank_zero_handlers",
]
