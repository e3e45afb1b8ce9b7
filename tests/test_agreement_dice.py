"""AVAP's 'Mean Voting' and 'Average' soft Dice on hand-made masks (values worked out by hand below)."""

from __future__ import annotations

import pytest
import torch

from multirater_monai.utils.errors import MultiRaterDataError
from multirater_monai.metrics import (
    AverageRaterDiceMetric,
    CalibratedPersonalizedSaver,
    MeanVotingDiceMetric,
    average_rater_dice,
    mean_voting_dice,
)


def _img(*rows):
    """(B, C, 1, 4) from per-image lists of 4-pixel channels."""
    return torch.tensor(rows, dtype=torch.float32)[:, :, None, :]


A = _img([[1, 1, 0, 0], [1, 0, 0, 0]])  # two raters; mean voting [1, .5, 0, 0]
CALIBRATED = _img([[0.95, 0.6, 0.2, 0.0]])
PERSONAL = _img([[0.8, 0.4, 0.0, 0.0], [0.6, 0.6, 0.0, 0.0]])


def test_mean_voting_by_hand():
    # thresholds 0.1 / 0.3 / 0.5 / 0.7 / 0.9:
    #   map > t:   1110  1100  1100  1000  1000
    #   vote > t:  1100  1100  1000  1000  1000
    #   Dice:      4/5   1     2/3   1     1      -> mean 0.893333
    assert mean_voting_dice(CALIBRATED, A).flatten().tolist() == pytest.approx([(0.8 + 1 + 2 / 3 + 1 + 1) / 5])
    # rater 2 missing: the vote is rater 1 alone (1100): Dice 4/5, 1, 1, 2/3, 2/3
    value = mean_voting_dice(CALIBRATED, A, torch.tensor([[True, False]]))
    assert value.item() == pytest.approx((0.8 + 1 + 1 + 2 / 3 + 2 / 3) / 5)


def test_average_by_hand():
    # rater 1 (1100) vs 0.8 0.4 0 0: thresholded 1100 1100 1000 1000 0000 -> 1, 1, 2/3, 2/3, 0
    # rater 2 (1000) vs 0.6 0.6 0 0: thresholded 1100 1100 1100 0000 0000 -> 2/3, 2/3, 2/3, 0, 0
    per_rater = average_rater_dice(PERSONAL, A)
    assert per_rater[0].tolist() == pytest.approx([(2 + 4 / 3) / 5, 2 / 5])
    # at the single threshold 0.5 it is the hard Dice per rater
    assert average_rater_dice(PERSONAL, A, thresholds=(0.5,))[0].tolist() == pytest.approx([2 / 3, 2 / 3])
    missing = average_rater_dice(PERSONAL, A, torch.tensor([[True, False]]))
    assert missing[0, 0].item() == pytest.approx(2 / 3) and torch.isnan(missing[0, 1])


def test_average_is_the_mean_over_raters_of_their_column_means():
    metric = AverageRaterDiceMetric()
    metric(PERSONAL, A)  # rater 1: 2/3, rater 2: 2/5
    metric(_img([[1, 1, 0, 0], [0, 0, 0, 0]]), A, rater_mask=torch.tensor([[True, False]]))  # rater 1: 1
    # columns: rater 1 (2/3 + 1) / 2, rater 2 2/5 (one image)  -> not the mean of per-image means (0.7667)
    assert metric.aggregate().item() == pytest.approx(((2 / 3 + 1) / 2 + 2 / 5) / 2)
    voting = MeanVotingDiceMetric()
    voting(CALIBRATED, A)
    assert voting.aggregate().item() == pytest.approx(0.893333, abs=1e-6)


def test_mismatches_name_the_fix():
    with pytest.raises(MultiRaterDataError, match="one calibrated map per structure"):
        mean_voting_dice(torch.rand(1, 2, 1, 4), torch.zeros(1, 3, 1, 4))
    with pytest.raises(MultiRaterDataError, match="got 1 outputs for 2 raters"):
        average_rater_dice(PERSONAL[:, :1], A)


def test_saver_reports_both_figures_and_the_set_table_per_structure():
    # two structures of two raters: structure 1 is the example above, structure 2 is perfect everywhere
    label = torch.cat([A, A], 1)[0]
    saver = CalibratedPersonalizedSaver(num_raters=2, structure_names=["disc", "cup"], print_table=False)
    calibrated = torch.cat([CALIBRATED, _img([[1.0, 0.5, 0.0, 0.0]])], 1)[0]
    personalized = torch.cat([PERSONAL, A], 1)[0]
    saver.update([calibrated], [personalized], [label], [torch.ones(4, dtype=torch.bool)])
    summary = saver.summary()
    assert summary["disc_mean_voting"] == pytest.approx(0.893333, abs=1e-6)
    assert summary["disc_average"] == pytest.approx(((2 + 4 / 3) / 5 + 2 / 5) / 2)
    assert summary["disc_dice_A1"] == pytest.approx(2 / 3) and summary["disc_dice_mean"] == pytest.approx(2 / 3)
    assert summary["cup_mean_voting"] == 1.0 and summary["cup_average"] == 1.0 and summary["cup_ged"] == 0.0
    # binarized at 0.5 the disc outputs are {1000, 1100}: the raters' masks, swapped. As SETS they equal
    # the annotations (GED 0, Dice_match 1) while the identity Dice_Ai is 2/3: why AVAP reports both
    assert summary["disc_ged"] == 0.0 and summary["disc_dice_match"] == 1.0
    assert saver.per_image()[0]["disc_mean_voting"] == pytest.approx(summary["disc_mean_voting"])
    with pytest.raises(MultiRaterDataError, match="expected K x R = 2 x 3"):
        CalibratedPersonalizedSaver(num_raters=3).update([calibrated], [personalized], [label], None)
