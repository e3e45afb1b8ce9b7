"""BinaryGeneralizedDiceLoss: hand-worked values, empty targets train, absent raters count nowhere."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss

from multirater_monai.losses import BinaryGeneralizedDiceLoss

BIG = 30.0  # logits +-30 are binary masks


def _logits(*rows):
    """(B, 1, 2, 2) logits from B binary rows of 4 pixels."""
    return (torch.tensor(rows, dtype=torch.float32) * 2 - 1).view(len(rows), 1, 2, 2) * BIG


def _masks(*rows):
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 2, 2)


def test_hand_worked_value():
    # target [1,0,0,0], prediction [1,1,0,0]
    # fg: tp 1, fp 1, |t| = 1 -> w 1; bg: target [0,1,1,1], pred [0,0,1,1]: tp 2, fn 1, |t| = 3 -> w 1/9
    # GDL = 1 - 2 (1 + 2/9) / (2 (1 + 1/2) + 2 (2 + 1/2) / 9) = 1 - (22/9) / (32/9) = 10/32
    loss = BinaryGeneralizedDiceLoss()(_logits([1, 1, 0, 0]), _masks([1, 0, 0, 0]))
    assert float(loss) == pytest.approx(10 / 32, abs=1e-5)


def test_empty_target_is_scored_by_the_background_class():
    # target empty: fg weight inf -> MONAI uses the largest finite weight, bg's 1/16;
    # bg: target all 1, pred [0,0,1,1]: tp 2, fn 2 -> GDL = 1 - 2 (2/16) / ((2 + 6) / 16) = 0.5
    loss = BinaryGeneralizedDiceLoss()(_logits([1, 1, 0, 0]), _masks([0, 0, 0, 0]))
    assert float(loss) == pytest.approx(0.5, abs=1e-4)  # smoothing 1e-5 on 0.25 / 0.5


def test_empty_target_pushes_false_positives_down():
    logits = torch.tensor([[0.5, 0.5, -0.5, -0.5]]).view(1, 1, 2, 2).requires_grad_()
    BinaryGeneralizedDiceLoss()(logits, torch.zeros(1, 1, 2, 2)).backward()
    assert (logits.grad > 1e-3).all(), logits.grad  # descent lowers every logit
    # a per-sample Dice of the same empty target gives no usable gradient: the defect this loss removes
    plain = logits.detach().clone().requires_grad_()
    DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(plain, torch.zeros(1, 1, 2, 2)).backward()
    assert plain.grad.abs().max() < 1e-4


def test_batch_pools_the_samples():
    # sample A: target [1,0,0,0], pred [1,0,0,0]; sample B: empty target, pred [1,0,0,0]
    # fg: tp 1, fp 1, |t| = 1 -> w 1; bg: |t| = 3 + 4 = 7 -> w 1/49, tp 3 + 3 = 6, fn 1
    # GDL = 1 - 2 (1 + 6/49) / (2 (1 + 1/2) + 2 (6 + 1/2) / 49) = 1 - (110/49) / (160/49) = 50/160
    loss = BinaryGeneralizedDiceLoss()(_logits([1, 0, 0, 0], [1, 0, 0, 0]), _masks([1, 0, 0, 0], [0, 0, 0, 0]))
    assert float(loss) == pytest.approx(50 / 160, abs=1e-5)


def test_channels_are_separate_losses_and_weight_removes_absent_samples():
    logits = torch.cat([_logits([1, 1, 0, 0]), _logits([1, 1, 0, 0])], dim=1).requires_grad_()  # (1, 2, 2, 2)
    target = torch.cat([_masks([1, 0, 0, 0]), _masks([0, 0, 0, 0])], dim=1)
    per_channel = BinaryGeneralizedDiceLoss(reduction="none")(logits, target)
    assert per_channel.tolist() == pytest.approx([10 / 32, 0.5], abs=1e-4)
    assert float(BinaryGeneralizedDiceLoss(reduction="sum")(logits, target)) == pytest.approx(10 / 32 + 0.5, abs=1e-4)
    # the second rater absent from the batch: loss 0 and no gradient to its channel
    weighted = BinaryGeneralizedDiceLoss(reduction="none")(logits, target, torch.tensor([[1.0, 0.0]]))
    assert weighted.tolist() == pytest.approx([10 / 32, 0.0], abs=1e-5)
    weighted.sum().backward()
    assert float(logits.grad[:, 1].abs().sum()) == 0.0


def test_absent_sample_does_not_change_the_loss():
    # an absent second sample with a wrong prediction changes nothing
    logits = _logits([1, 1, 0, 0], [0, 0, 1, 1])
    target = _masks([1, 0, 0, 0], [1, 1, 0, 0])
    loss = BinaryGeneralizedDiceLoss()(logits, target, torch.tensor([[1.0], [0.0]]))
    assert float(loss) == pytest.approx(10 / 32, abs=1e-5)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="same shape"):
        BinaryGeneralizedDiceLoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"weight \(2,\) must be \(batch, channels\)"):
        BinaryGeneralizedDiceLoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(2))
