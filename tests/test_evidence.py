"""Evidence over seeds and images: paired bootstrap intervals and verdicts on cases worked out by hand."""

from __future__ import annotations

import math

import pytest

from multirater_monai.metrics import claim_verdict, mean_and_std, paired_bootstrap_interval, per_image_values
from multirater_monai.utils.errors import MultiRaterDataError


def test_a_constant_difference_has_a_point_interval():
    # every image is better by exactly 0.02: every resample's mean difference is 0.02
    mean, low, high = paired_bootstrap_interval([0.82, 0.75, 0.91, 0.60], [0.80, 0.73, 0.89, 0.58])
    assert (mean, low, high) == pytest.approx((0.02, 0.02, 0.02))
    assert claim_verdict(low, high) == "holds"


def test_two_images_give_the_three_resample_means_by_hand():
    # differences (0, 1): a resample of 2 images has mean 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4), so the
    # 2.5 % and 97.5 % percentiles are 0 and 1; the interval touches 0, so nothing is established
    mean, low, high = paired_bootstrap_interval([0.5, 1.5], [0.5, 0.5], num_resamples=20000)
    assert mean == 0.5 and (low, high) == (0.0, 1.0)
    assert claim_verdict(low, high) == "inconclusive"


def test_symmetric_differences_are_inconclusive_and_direction_matters():
    mean, low, high = paired_bootstrap_interval([1.0, 0.0] * 20, [0.0, 1.0] * 20)
    assert mean == 0.0 and low < 0 < high and claim_verdict(low, high) == "inconclusive"
    # GED: smaller is better, so an interval wholly below 0 means the claim holds
    assert claim_verdict(-0.05, -0.01, larger_is_better=False) == "holds"
    assert claim_verdict(-0.05, -0.01, larger_is_better=True) == "fails"
    assert claim_verdict(0.01, 0.05, larger_is_better=False) == "fails"


def test_images_undefined_for_either_row_take_no_part():
    assert paired_bootstrap_interval([1.0, math.nan, 3.0], [0.0, 5.0, 2.0]) == (1.0, 1.0, 1.0)
    assert paired_bootstrap_interval([1.0, 2.0], [None, 1.0]) == (1.0, 1.0, 1.0)
    with pytest.raises(MultiRaterDataError, match="same length"):
        paired_bootstrap_interval([1.0, 2.0], [1.0])
    with pytest.raises(MultiRaterDataError, match="no image has a value for both rows"):
        paired_bootstrap_interval([math.nan], [1.0])


def test_mean_and_std_over_seeds():
    mean, std = mean_and_std([0.8, 0.9, None])
    assert mean == pytest.approx(0.85) and std == pytest.approx(math.sqrt(0.005))  # sample std of (0.8, 0.9)
    assert mean_and_std([0.7]) == (0.7, 0.0)
    assert all(math.isnan(v) for v in mean_and_std([None, math.nan]))


def test_per_image_values_average_each_image_over_the_seeds():
    seed0 = [{"image": "a", "dice": 0.8}, {"image": "b", "dice": 0.6}]
    seed1 = [{"image": "a", "dice": 0.9}, {"image": "b", "dice": None}]
    assert per_image_values([seed0, seed1], "dice") == pytest.approx({"a": 0.85, "b": 0.6})
    with pytest.raises(MultiRaterDataError, match="no 'image' name"):
        per_image_values([[{"dice": 0.5}]], "dice")
