"""AVAP: output layout, step-1 objective, two-step freezing, missing raters, export, learning the raters' styles."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from multirater_monai.data import agreement_label
from multirater_monai.utils.errors import MultiRaterDataError
from multirater_monai.metrics import soft_dice
from multirater_monai.networks import AVAP, BackboneConfig

from .synthetic_batches import fit, synthetic_tensors

TINY = dict(backbone=BackboneConfig(channels=(4, 8, 16), feature_channels=4), agreement_channels=4, preference_hidden=4)


def _net(num_raters=3, num_structures=1, **kwargs):
    torch.manual_seed(0)
    return AVAP.build(num_raters=num_raters, num_structures=num_structures, **{**TINY, **kwargs})


def _batch(b=2, channels=3, size=16):
    torch.manual_seed(1)
    return torch.randn(b, 1, size, size), (torch.rand(b, channels, size, size) > 0.5).float()


def test_output_layout_agreement_then_personalized_structure_major():
    net = _net(num_raters=3, num_structures=2).eval()
    image = _batch()[0]
    with torch.no_grad():
        everything = net(image)
        features = net.backbone(image)
        per_code = net.preference_head(features, torch.eye(3)[None].expand(2, 3, 3))  # (B, R, K, H, W)
        net.set_output_mode("agreement")
        agreement = net(image)
        net.set_output_mode("personalized")
        personalized = net(image)
    assert everything.shape == (2, 2 * 4 + 2 * 3, 16, 16)
    assert torch.equal(everything, torch.cat([agreement, personalized], 1))
    # channel K*(R+1) + k*R + r is rater r's mask of structure k
    assert torch.allclose(personalized[:, 3 * 1 + 2], per_code[:, 2, 1], atol=1e-6)
    assert torch.allclose(personalized[:, 0], per_code[:, 0, 0], atol=1e-6)
    calibrated = net.calibrated_map(agreement)
    assert calibrated.shape == (2, 2, 16, 16) and set(torch.unique(calibrated * 3).tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_step1_objective_is_dice_ce_on_the_agreement_label_of_each_structure():
    net = _net(num_raters=3, num_structures=2)
    image, label = _batch(channels=6)
    terms = net.training_objective(image, label)
    assert set(terms) == {"loss", "avm", "avm_s1", "avm_s2"}
    loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    logits = net.agreement_logits(net.backbone(image))
    target = agreement_label(label, num_structures=2)
    expected = loss(logits[:, :4], target[:, :1]) + loss(logits[:, 4:], target[:, 1:])
    assert torch.allclose(terms["loss"], expected, atol=1e-6)
    terms["loss"].backward()
    assert all(p.grad is None for p in net.preference_head.parameters())  # the APM waits for step 2


def test_step2_trains_only_the_preference_head_and_keeps_batchnorm_statistics():
    net = _net()
    image, label = _batch(b=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.start_stage(2)
    assert {id(p) for p in net.parameters_to_train()} == {id(p) for p in net.preference_head.parameters()}
    optimizer = torch.optim.Adam(net.parameters_to_train(), lr=1e-2)
    for _ in range(3):
        terms = net.train().training_objective(image, label)
        assert set(terms) == {"loss", "apm_dice", "apm_ce"}
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    after = net.state_dict()
    frozen = [k for k in before if not k.startswith("preference_head.")]
    assert any("running_mean" in k for k in frozen)
    assert [k for k in frozen if not torch.equal(before[k], after[k])] == []
    assert not torch.equal(before["preference_head.controller.weight"], after["preference_head.controller.weight"])
    assert all(p.grad is None for n, p in net.named_parameters() if not n.startswith("preference_head."))


def test_step2_never_learns_from_a_missing_rater():
    net = _net(stage=2, stage2_raters="all")
    image, label = _batch()
    mask = torch.tensor([[True, False, True], [True, True, True]])
    first = net.training_objective(image, label, mask)["loss"]
    changed = label.clone()
    changed[0, 1] = 1 - changed[0, 1]  # the missing rater's channel carries no information
    assert torch.allclose(net.training_objective(image, changed, mask)["loss"], first)
    # "random" draws only present raters: with one present rater it is that rater's loss (BatchNorm in
    # eval mode, so the batch statistics of the other codes do not enter)
    net.eval()
    only = torch.tensor([[False, False, True], [False, False, True]])
    net.stage2_raters = "random"
    random_loss = net.training_objective(image, label, only)["loss"]
    net.stage2_raters = "all"
    assert torch.allclose(net.training_objective(image, label, only)["loss"], random_loss, atol=1e-6)


def test_rater_count_mismatch_names_the_fix():
    net = _net(num_raters=3, num_structures=2)
    image, label = _batch(channels=4)
    with pytest.raises(MultiRaterDataError, match=r"4 rater channels but the network was built for num_raters=3 x "
                                                  r"num_structures=2 = 6; set num_raters and num_structures"):
        net.training_objective(image, label)


def test_step1_checkpoint_loads_into_a_step2_network():
    step1 = _net().eval()
    step2 = _net(stage=2)
    step2.load_state_dict(step1.state_dict(), strict=True)
    image = _batch()[0]
    with torch.no_grad():
        assert torch.equal(step1(image), step2.eval()(image))


@pytest.mark.parametrize("mode", ["script", "trace"])
def test_torchscript_export_roundtrip(mode, tmp_path):
    net = _net(num_structures=2).eval()
    image = _batch()[0]
    exported = torch.jit.script(net) if mode == "script" else torch.jit.trace(net, image)
    torch.jit.save(exported, tmp_path / "net.ts")
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(tmp_path / "net.ts")(image), net(image), atol=1e-6)


def _dice(pred, label):
    inter = (pred * label).sum((-1, -2))
    return (2 * inter / (pred.sum((-1, -2)) + label.sum((-1, -2))).clamp(min=1e-8)).mean(0)


def test_two_steps_learn_the_agreement_and_each_raters_style():
    """Two structures (lesion + core), raters conservative, smooth, liberal, noisy at 32x32: ~15 s on one core.

    Measured (seed 0): AVM 'Mean Voting' on the lesion ~0.86; consensus (calibrated map > 0.5) Dice per
    rater ~[0.72, 0.89, 0.62, 0.76]; APM per rater ~[0.85, 0.90, 0.90, 0.78].
    """
    torch.manual_seed(0)
    train, test = synthetic_tensors(64, 0, 32, num_structures=2), synthetic_tensors(32, 1, 32, num_structures=2)
    net = AVAP.build(num_raters=4, num_structures=2, backbone=BackboneConfig(channels=(8, 16, 32), feature_channels=8),
                     agreement_channels=8)
    fit(net, train, 200)
    with torch.no_grad():
        calibrated = net.calibrated_map(net.eval()(test[0])[:, :10])
    assert soft_dice(calibrated[:, :1], test[1][:, :4]).mean() > 0.75  # the lesion's agreement map
    consensus = _dice((calibrated[:, :1] > 0.5).float().expand(-1, 4, -1, -1), test[1][:, :4])
    net.start_stage(2)
    fit(net, train, 150)
    with torch.no_grad():
        personalized = net.eval()(test[0])[:, 10:]
    apm = _dice((personalized[:, :4] > 0).float(), test[1][:, :4])
    # conservative (A1) and liberal (A3) are furthest from the consensus: the APM must win clearly
    assert apm[0] > consensus[0] + 0.05 and apm[2] > consensus[2] + 0.1, (consensus, apm)
    areas = (personalized > 0).float().mean((0, 2, 3))  # lesion A1..A4, then core A1..A4
    assert areas[0] < areas[1] < areas[2], areas
    assert areas[4] < areas[5] < areas[6], areas  # the same order on the second structure
