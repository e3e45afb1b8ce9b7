"""D-Persona bound loss (eq. 5) on hand-made masks."""

from __future__ import annotations

import pytest
import torch

from monai.losses import DiceLoss

from multirater_monai.data import MultiRaterDataError
from multirater_monai.losses import BoundLoss, annotation_bounds

BIG = 30.0  # sigmoid(30) = 1 - 9e-14: logits +-30 are binary masks for the Dice


def _logits(*rows):
    """(1, K, 1, W) logits from K binary rows."""
    return (torch.tensor(rows, dtype=torch.float32) * 2 - 1)[None, :, None, :] * BIG


def _bound():
    """The bound loss with a plain per-sample Dice: the min/max logic with the simplest hand-worked values."""
    return BoundLoss(dice=DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5))


def _stack(*rows):
    return torch.tensor(rows, dtype=torch.float32)[None, :, None, :]


# A1 = [1,1,0,0], A2 = [1,1,1,0]: intersection I = [1,1,0,0] (|I| = 2), union U = [1,1,1,0] (|U| = 3)
LABEL = _stack([1, 1, 0, 0], [1, 1, 1, 0])


def test_samples_spanning_the_bounds_give_zero():
    loss = _bound()(_logits([1, 1, 0, 0], [1, 1, 1, 0]), LABEL)
    assert float(loss) == pytest.approx(0.0, abs=1e-5)


def test_both_samples_equal_the_union():
    # min = max = U: Dice(U, I) = 2*2 / (3 + 2) = 0.8 -> 0.2; union term 0
    inter, union = _bound().terms(_logits([1, 1, 1, 0], [1, 1, 1, 0]), LABEL)
    assert float(inter) == pytest.approx(0.2, abs=1e-5)
    assert float(union) == pytest.approx(0.0, abs=1e-5)


def test_too_narrow_and_too_wide_samples():
    # S1 = [1,0,0,0], S2 = [1,1,1,1]: min = [1,0,0,0], Dice with I = 2*1/(1+2) = 2/3 -> 1/3;
    # max = [1,1,1,1], Dice with U = 2*3/(4+3) = 6/7 -> 1/7; total 10/21
    loss = _bound()(_logits([1, 0, 0, 0], [1, 1, 1, 1]), LABEL)
    assert float(loss) == pytest.approx(10 / 21, abs=1e-5)


def test_missing_rater_is_excluded_from_intersection_and_union():
    label = _stack([1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1])  # third rater absent
    samples = _logits([1, 1, 0, 0], [1, 1, 1, 0])
    loss = _bound()(samples, label, torch.tensor([[True, True, False]]))
    assert float(loss) == pytest.approx(0.0, abs=1e-5)
    # if the third rater counted: I = empty, U = [1,1,1,1];
    # Dice([1,1,0,0], empty) = 1e-5 / (2 + 1e-5) ~ 0 -> ~1; Dice([1,1,1,0], U) = 6/7 -> 1/7
    loss_all = _bound()(samples, label, torch.ones(1, 3, dtype=torch.bool))
    assert float(loss_all) == pytest.approx(1 + 1 / 7, abs=1e-4)


def test_default_dice_is_the_batch_generalized_dice():
    # min = max = U = [1,1,1,0] against I = [1,1,0,0], foreground and background classes:
    # fg: tp 2, fp 1, |I| = 2 -> w 1/4; bg: target [0,0,1,1], pred [0,0,0,1]: tp 1, fn 1, w 1/4
    # GDL = 1 - 2 (2/4 + 1/4) / (2 (2 + 1/2) / 4 + 2 (1 + 1/2) / 4) = 1 - 1.5 / 2 = 0.25; union term 0
    inter, union = BoundLoss().terms(_logits([1, 1, 1, 0], [1, 1, 1, 0]), LABEL)
    assert float(inter) == pytest.approx(0.25, abs=1e-5)
    assert float(union) == pytest.approx(0.0, abs=1e-5)


def test_annotation_bounds_with_mask():
    label = _stack([1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1])
    inter, union = annotation_bounds(label, torch.tensor([[True, True, False]]))
    assert inter.flatten().tolist() == [0, 1, 0, 0]
    assert union.flatten().tolist() == [1, 1, 1, 0]


def test_gradient_reaches_the_extreme_samples():
    logits = torch.tensor([[-2.0, 1.0], [2.0, 3.0]]).T[None, :, None, :].clone().requires_grad_()  # (1, 2, 1, 2)
    # sample 0 = [-2, 1] is the minimum at both pixels, sample 1 = [2, 3] the maximum
    _bound()(logits, _stack([1, 0], [1, 1])).backward()
    assert (logits.grad[0, 0] != 0).all() and (logits.grad[0, 1] != 0).all()


def test_sample_without_raters_is_an_error():
    with pytest.raises(MultiRaterDataError, match="no annotating rater"):
        BoundLoss()(_logits([1, 1, 0, 0]), LABEL, torch.zeros(1, 2, dtype=torch.bool))
