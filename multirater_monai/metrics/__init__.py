"""Set-to-set metrics for multi-rater segmentation.

Three layers, as MONAI's own ``meandice.py`` -> ``handlers/mean_dice.py``:
functional core (:py:mod:`.set_metrics`), cumulative metrics (:py:mod:`.cumulative`),
ignite handlers for the evaluator (:py:mod:`.handlers`).
"""

from .cumulative import (
    DiceMatchMetric,
    DiceMaxMetric,
    DiceMeanMetric,
    DicePerRaterMetric,
    GeneralizedEnergyDistanceMetric,
    SetMetricsTable,
    SoftDiceMetric,
    nan_aware_reduction,
)
from .handlers import (
    DiceMatch,
    DiceMax,
    DiceMean,
    GeneralizedEnergyDistance,
    SetMetricsSaver,
    SoftDice,
    from_engine_with_rater_mask,
)
from .set_metrics import (
    COMPAT_MODES,
    DEFAULT_THRESHOLDS,
    compute_set_metrics,
    dice_match,
    dice_match_from_matrix,
    dice_matrix,
    dice_max,
    dice_max_from_matrix,
    dice_per_rater,
    dice_per_rater_from_matrix,
    generalized_energy_distance,
    soft_dice,
)
from .agreement_dice import (
    AverageRaterDice,
    AverageRaterDiceMetric,
    MeanVotingDice,
    MeanVotingDiceMetric,
    average_rater_dice,
    mean_voting_dice,
)
from .calibrated_personalized import CalibratedPersonalizedSaver
from .evidence import claim_verdict, mean_and_std, paired_bootstrap_interval, per_image_values
