"""MR-Net: the expertise-fused soft label by hand (absent raters excluded), the Dirichlet expertise vectors, the
loss terms, the output groups, fixed sampling, TorchScript, clear errors, and rater styles on synthetic raters."""

from __future__ import annotations

import pytest
import torch

from multirater_monai.data import FuseRatersd
from multirater_monai.losses import PresentRaterDiceBCELoss
from multirater_monai.networks import BackboneConfig, FusionUNet, MRNet
from multirater_monai.networks.nets.mrnet import expertise_fused_label, random_expertise
from multirater_monai.utils.errors import MultiRaterDataError

from .synthetic_batches import dice_per_output, fit, synthetic_tensors

SMALL = BackboneConfig(channels=(8, 16, 32), feature_channels=8)


def _net(**kwargs) -> MRNet:
    torch.manual_seed(0)
    options = {"num_raters": 3, "backbone": SMALL, "head_hidden": 8, "num_samples": 5, **kwargs}
    return MRNet.build(**options)


def _batch(raters: int = 3, structures: int = 1, size: int = 16):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 1, size, size, generator=g)
    return image, (torch.rand(2, raters * structures, size, size, generator=g) > 0.5).float()


def test_fused_label_by_hand_with_an_absent_rater():
    # one image, 3 raters, 4 pixels: A1 = [1, 1, 0, 0], A2 = [1, 0, 1, 0], A3 (absent) = [1, 1, 1, 1]
    label = torch.tensor([[1.0, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]]).reshape(1, 3, 1, 4)
    weights = torch.tensor([[0.3, 0.1, 0.6]])
    present = torch.tensor([[True, True, False]])
    target, valid = expertise_fused_label(label, weights, present)
    # A3 drops out; A1 and A2 renormalised to 0.3 / 0.4 = 0.75 and 0.1 / 0.4 = 0.25
    torch.testing.assert_close(target, torch.tensor([[[[1.0, 0.75, 0.25, 0.0]]]]))
    assert valid.tolist() == [[True]]
    # all present: sum_r w_r y_r = [1.0, 0.9, 0.7, 0.6]
    target, _ = expertise_fused_label(label, weights, torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(target, torch.tensor([[[[1.0, 0.9, 0.7, 0.6]]]]))


def test_fused_label_per_structure_and_undefined_where_no_weighted_rater_is_present():
    # two structures, two raters, structure-major (s1 A1, s1 A2, s2 A1, s2 A2), 2 pixels
    label = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]]).reshape(1, 4, 1, 2)
    weights = torch.tensor([[0.8, 0.2]])
    target, valid = expertise_fused_label(label, weights, torch.ones(1, 4, dtype=torch.bool), num_structures=2)
    torch.testing.assert_close(target, torch.tensor([[[[0.8, 0.2]], [[0.8, 0.8]]]]))
    # structure 2: A1 absent -> A2 alone (weight renormalised to 1)
    target, valid = expertise_fused_label(label, weights, torch.tensor([[True, True, False, True]]), num_structures=2)
    torch.testing.assert_close(target[0, 1], torch.tensor([[0.0, 0.0]]))
    assert valid.tolist() == [[True, True]]
    # the only present rater has weight 0: no target (valid False), and the target is 0, not NaN
    target, valid = expertise_fused_label(label, torch.tensor([[0.0, 1.0]]), torch.tensor([[True, False, True, False]]),
                                          num_structures=2)
    assert valid.tolist() == [[False, False]] and torch.equal(target, torch.zeros_like(target))


def test_random_expertise_is_a_dirichlet_over_the_present_raters():
    present = torch.tensor([[True, False, True]]).expand(20000, 3)
    w = random_expertise(present, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(w[:, 1], torch.zeros(20000))  # the absent rater never weighs
    torch.testing.assert_close(w.sum(1), torch.ones(20000))
    # over two present raters w_1 ~ Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 1/8 for a = 1/2
    assert w[:, 0].mean().item() == pytest.approx(0.5, abs=0.01)
    assert w[:, 0].var().item() == pytest.approx(1 / 8, abs=0.005)
    # concentration 1 over 3 raters is uniform on the simplex: E[w_r] = 1/3, Var = 2 / 36
    w = random_expertise(torch.ones(20000, 3, dtype=torch.bool), 1.0, torch.Generator().manual_seed(1))
    assert w.mean(0).tolist() == pytest.approx([1 / 3] * 3, abs=0.01)
    assert w[:, 2].var().item() == pytest.approx(2 / 36, abs=0.003)
    again = random_expertise(torch.ones(20000, 3, dtype=torch.bool), 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(w, again)  # a seeded generator reproduces the draws
    with pytest.raises(MultiRaterDataError, match="rater_mask all False"):
        random_expertise(torch.tensor([[False, False]]), 1.0)


def test_loss_terms_by_hand_and_absent_raters_do_not_count():
    # the single-vector loss of bundle 0.2.0 (one shared output, Dice + BCE on every fused label)
    net = _net(num_structures=2, rater_readout=False, fused_loss="dice+bce").eval()  # eval: same BatchNorm stats
    image, label = _batch(structures=2)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    expertise = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    loss_fn = PresentRaterDiceBCELoss()
    with torch.no_grad():
        terms = net.training_objective(image, label, mask, expertise=expertise)
        refined, coarse, reconstruction = net.predict(net.backbone(image), expertise.unsqueeze(1))
        # sample 0: A2 absent -> weights 0.5 / 0.7 and 0.2 / 0.7 on A1 and A3, per structure
        w0 = torch.tensor([5 / 7, 0.0, 2 / 7])
        target0 = torch.stack([(w0[:, None, None] * label[0, 3 * k:3 * k + 3]).sum(0) for k in range(2)])
        target1 = torch.stack([(expertise[1][:, None, None] * label[1, 3 * k:3 * k + 3]).sum(0) for k in range(2)])
        target = torch.stack([target0, target1])
        valid = torch.ones(2, 2, dtype=torch.bool)
        assert terms["refined"].item() == pytest.approx(sum(loss_fn(refined[:, 0], target, valid)).item(), rel=1e-5)
        assert terms["coarse"].item() == pytest.approx(sum(loss_fn(coarse[:, 0], target, valid)).item(), rel=1e-5)
        full_mask = mask.repeat(1, 2)
        expected = sum(loss_fn(reconstruction[:, 0], label, full_mask))
        assert terms["reconstruction"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert terms["loss"].item() == pytest.approx(
            (terms["refined"] + terms["coarse"] + terms["reconstruction"]).item(), rel=1e-6)
        # whatever the absent rater's channels hold changes nothing
        other = label.clone()
        other[0, 1] = 1 - other[0, 1]
        other[0, 4] = 1.0
        again = net.training_objective(image, other, mask, expertise=expertise)
        for key in terms:
            assert again[key].item() == terms[key].item(), key
        assert net.training_objective(image, other, expertise=expertise)["loss"].item() != terms["loss"].item()
        # "bce": the cross entropy alone against the soft label (mean over pixels and structures) in both fused
        # terms; the reconstruction term is unchanged
        net.fused_loss = "bce"
        bce_only = net.training_objective(image, label, mask, expertise=expertise)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(refined[:, 0], target)
        assert bce_only["refined"].item() == pytest.approx(bce.item(), rel=1e-5)
        assert bce_only["coarse"].item() == pytest.approx(loss_fn(coarse[:, 0], target, valid)[1].item(), rel=1e-5)
        assert bce_only["reconstruction"].item() == terms["reconstruction"].item()


def test_training_codes_anchor_the_equal_and_one_hot_vectors_inference_reads():
    """Every training step also trains the vectors that are scored: the equal-weight vector (the calibrated
    map, target the mean of the PRESENT raters) and each rater's one-hot vector (target that rater's mask);
    before, only Dirichlet draws were trained, which almost never lie near either."""
    net = _net(num_structures=2, random_codes=2).eval()
    present = torch.tensor([[True, False, True], [True, True, True]])
    torch.manual_seed(0)
    codes = net.training_codes(present)
    assert codes.shape == (2, 1 + 3 + 2, 3)
    torch.testing.assert_close(codes[:, 0], torch.full((2, 3), 1 / 3))
    torch.testing.assert_close(codes[:, 1:4], torch.eye(3).expand(2, 3, 3))
    assert codes[0, 4:, 1].eq(0).all() and torch.allclose(codes[:, 4:].sum(2), torch.ones(2, 2))  # absent A2: 0
    assert _net(anchor_codes=False).training_codes(present).shape == (2, 1, 3)
    # the loss of N vectors per image: the Dice per (vector, structure) channel over the batch, the cross entropy
    # over the valid (sample, channel) pairs, by hand; sample 0's one-hot A2 target is undefined and not counted
    net = _net(num_structures=2, random_codes=0, fused_loss="dice+bce").eval()
    image, label = _batch(structures=2)
    mask = present
    loss_fn = PresentRaterDiceBCELoss()
    with torch.no_grad():
        terms = net.training_objective(image, label, mask)
        codes = net.fixed_codes.expand(2, 4, 3)
        refined, coarse, reconstruction = net.predict(net.backbone(image), codes)
        stack = label.reshape(2, 2, 3, 16, 16)
        mean0 = (stack[0, :, 0] + stack[0, :, 2]) / 2  # the equal vector, A2 absent: the mean of A1 and A3
        target = torch.zeros(2, 4, 2, 16, 16)
        target[0, 0], target[1, 0] = mean0, stack[1].mean(1)
        target[:, 1:] = stack.transpose(1, 2)  # one-hot r: rater r's masks (K of them)
        valid = torch.ones(2, 4, 2, dtype=torch.bool)
        valid[0, 2] = False
        expected = sum(loss_fn(refined.flatten(1, 2), target.flatten(1, 2), valid.flatten(1)))
        assert terms["refined"].item() == pytest.approx(expected.item(), rel=1e-5)
        expected = sum(loss_fn(coarse.flatten(1, 2), target.flatten(1, 2), valid.flatten(1)))
        assert terms["coarse"].item() == pytest.approx(expected.item(), rel=1e-5)
        expected = sum(loss_fn(reconstruction.flatten(1, 2), label.repeat(1, 4, 1, 1), mask.repeat(1, 8)))
        assert terms["reconstruction"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="random_codes"):
        _net(anchor_codes=False, random_codes=0)


def test_hard_dice_loss_puts_the_dice_only_on_hard_fused_labels():
    """"hard_dice+bce": the cross entropy on every fused label, the Dice only on the (sample, channel) pairs
    whose label is a hard mask: the one-hot vectors' (and, where the raters agree, any vector's)."""
    net = _net(random_codes=0, fused_loss="hard_dice+bce").eval()
    image, label = _batch()
    label[1] = label[1, :1]  # sample 1: the three raters agree, so its equal-vector label is hard too
    loss_fn = PresentRaterDiceBCELoss()
    with torch.no_grad():
        terms = net.training_objective(image, label)
        refined = net.predict(net.backbone(image), net.fixed_codes.expand(2, 4, 3))[0][:, :, 0]  # (B, 4, *sp)
        target = torch.cat([label.mean(1, keepdim=True), label], 1)
        hard = torch.ones(2, 4, dtype=torch.bool)
        hard[0, 0] = False  # sample 0's mean of three different masks is soft
        dice = loss_fn(refined, target, hard)[0]
        bce = loss_fn(refined, target, torch.ones(2, 4, dtype=torch.bool))[1]
        assert terms["refined"].item() == pytest.approx((dice + bce).item(), rel=1e-5)
        net.fused_loss = "dice+bce"
        both = net.training_objective(image, label)["refined"]
        assert both.item() == pytest.approx(sum(loss_fn(refined, target, torch.ones(2, 4, dtype=torch.bool))).item(),
                                            rel=1e-5)
        assert both.item() != terms["refined"].item()


def test_rater_readout_gives_each_one_hot_vector_its_own_output_layer():
    """rater_readout: the expertise and refinement heads end in one output channel per (structure, rater),
    mixed by the vector; a one-hot vector reads its rater's channel, the equal vector their mean, by hand."""
    net = _net(num_structures=2, rater_readout=True, readout_space="probability").eval()
    assert net.expertise_head.out_channels == 6 and net.refinement_head.out.out_channels == 6
    image, _ = _batch()
    codes = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]]).expand(2, 3, 3)
    with torch.no_grad():
        features = net.backbone(image)
        readouts = net.expertise_head(features, codes).reshape(2, 3, 2, 3, 16, 16)  # (B, N, K, R, *sp)
        _, coarse, _ = net.predict(features, codes)
        # probability space (default): the fused probability is the weighted mean of the raters' probabilities
        p = torch.sigmoid(readouts)
        torch.testing.assert_close(torch.sigmoid(coarse[:, 0]), p[:, 0].mean(2))
        torch.testing.assert_close(coarse[:, 1], readouts[:, 1, :, 1])  # one-hot A2: A2's channel, per structure
        torch.testing.assert_close(torch.sigmoid(coarse[:, 2]), 0.2 * p[:, 2, :, 0] + 0.8 * p[:, 2, :, 2])
        # refined: each rater's readout plus its own residual, fused the same way
        refined, coarse, reconstruction = net.predict(features, codes)
        raters = torch.sigmoid(reconstruction).reshape(2, 3, 2, 3, 16, 16)
        u = 4.0 * raters.var(dim=3, unbiased=False)
        residual = net.refinement_head.residual(features, coarse, u, codes).reshape(2, 3, 2, 3, 16, 16)
        q = torch.sigmoid(readouts + residual)
        torch.testing.assert_close(torch.sigmoid(refined[:, 0]), q[:, 0].mean(2))
        torch.testing.assert_close(refined[:, 1], (readouts + residual)[:, 1, :, 1])
        out = net(image)
        assert out.shape == (2, 8, 16, 16)
        torch.testing.assert_close(torch.jit.script(net)(image), out)
        # logit space: the weighted mean of the logits
        net.readout_space = "logit"
        _, coarse, _ = net.predict(features, codes)
        torch.testing.assert_close(coarse[:, 0], readouts[:, 0].mean(2))
        torch.testing.assert_close(coarse[:, 2], 0.2 * readouts[:, 2, :, 0] + 0.8 * readouts[:, 2, :, 2])
    net.train().training_objective(image, _batch(structures=2)[1])["loss"].backward()
    with pytest.raises(ValueError, match="expertise_head"):
        shared_output = _net(num_structures=2, rater_readout=False).expertise_head  # K outputs, not K x R
        MRNet(net.backbone, shared_output, net.reconstruction_head, net.refinement_head, 3, 2)


def test_outputs_are_the_refined_prediction_for_equal_one_hot_and_random_vectors():
    net = _net(num_structures=2, num_samples=4).eval()
    image, _ = _batch()
    with torch.no_grad():
        out = net(image)
        assert net.output_groups() == {"calibrated": 2, "personalized": 6} and out.shape == (2, 8, 16, 16)
        features = net.backbone(image)
        codes = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]).expand(2, 4, 3)
        refined = net.predict(features, codes)[0]  # (B, 4 vectors, K, *sp)
        torch.testing.assert_close(out[:, :2], refined[:, 0])  # calibrated: the equal-weight vector
        torch.testing.assert_close(out[:, 2:5], refined[:, 1:, 0])  # structure 1, raters A1..A3
        torch.testing.assert_close(out[:, 5:8], refined[:, 1:, 1])  # structure 2
        groups = net.split_outputs(out[0])
        torch.testing.assert_close(groups["calibrated"], torch.sigmoid(out[0, :2]))
        assert groups["personalized"].shape == (6, 16, 16)
        # samples: random vectors on the simplex, fixed by the seed
        net.set_output_mode("samples")
        samples = net(image)
        assert samples.shape == (2, 8, 16, 16) and net.num_samples == 4
        torch.testing.assert_close(net.sample_codes.sum(1), torch.ones(4))
        torch.testing.assert_close(samples, net(image))
        sample_refined = net.predict(features, net.sample_codes.expand(2, 4, 3))[0]
        torch.testing.assert_close(samples[:, 4:], sample_refined[:, :, 1])
        net.set_output_mode("all")
        assert net.output_groups() == {"calibrated": 2, "personalized": 6, "samples": 8}
        torch.testing.assert_close(net(image), torch.cat([out, samples], 1))
        net.set_sampling(num_samples=7, sample_seed=None)
        net.set_output_mode("samples")
        assert net(image).shape[1] == 14 and not torch.equal(net(image), net(image))
        net.set_sampling(sample_seed=3)
        torch.testing.assert_close(net(image), net(image))


@pytest.mark.parametrize("mode", ["calibrated+personalized", "samples", "all"])
def test_torchscript_reproduces_every_output_mode(mode):
    net = _net().eval()
    net.set_output_mode(mode)
    image, _ = _batch()
    with torch.no_grad():
        expected = net(image)
        torch.testing.assert_close(torch.jit.script(net)(image), expected)
        torch.testing.assert_close(torch.jit.trace(net, image)(image), expected)


def test_clear_errors_on_bad_batches_and_settings():
    net = _net()
    image, label = _batch()
    with pytest.raises(MultiRaterDataError, match="num_raters"):
        net.training_objective(image, label[:, :2])
    with pytest.raises(MultiRaterDataError, match="does not match image"):
        net.training_objective(image, label[:, :, :8])
    with pytest.raises(MultiRaterDataError, match="rater_mask all False"):
        net.training_objective(image, label, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(MultiRaterDataError, match="rater_mask"):
        net.training_objective(image, label, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="concentration"):
        _net(concentration=0.0)
    with pytest.raises(ValueError, match="fused_loss"):
        _net(fused_loss="dice")
    with pytest.raises(ValueError, match="random_codes"):
        _net(random_codes=-1)
    with pytest.raises(ValueError, match="readout_space"):
        _net(readout_space="odds")
    with pytest.raises(ValueError, match="output_mode"):
        net.set_output_mode("prior")


@pytest.mark.slow
def test_learns_each_raters_style_and_a_calibrated_map_between_the_raters():
    """Synthetic raters (conservative A1, smooth A2, liberal A3, noisy A4) at 32x32, 150 steps for MR-Net and
    for the majority-vote U-Net (rater-blind); about 15 s on one core.

    Measured (seed 0, test split of 32; bundle 0.3.0 defaults, 2026-12-03): MR-Net one-hot outputs, Dice with
    their rater [0.81, 0.89, 0.91, 0.79]; majority-vote U-Net [0.66, 0.89, 0.67, ...]; areas (fraction of
    pixels) of the outputs A1..A4 [0.038, 0.078, 0.145, 0.089], of the calibrated map 0.080, of the raters'
    masks [0.037, 0.074, 0.141, 0.083]. (0.2.0: [0.82, 0.89, 0.91, 0.78], calibrated area 0.087; with its
    fused_loss "bce": [0.73, 0.89, 0.83, 0.78], still above the U-Net.)
    """
    torch.manual_seed(0)
    train, test = synthetic_tensors(64, 0, 32), synthetic_tensors(32, 1, 32)
    net = MRNet.build(num_raters=4, backbone=SMALL, head_hidden=16)
    fit(net, train, 150)
    torch.manual_seed(0)
    majority = FusionUNet.build(num_raters=4, backbone=BackboneConfig(channels=(8, 16, 32)))
    fused = FuseRatersd(method="majority")
    votes = torch.stack([fused({"label": y, "rater_mask": m})["label"] for y, m in zip(train[1], train[2])])
    fit(majority, train, 150, target=votes)
    with torch.no_grad():
        out = net.eval()(test[0])
        blind = dice_per_output(majority.eval()(test[0]).expand(-1, 4, -1, -1), test[1])
    calibrated, personalized = out[:, :1], out[:, 1:]
    matrix = torch.stack([dice_per_output(personalized[:, s:s + 1].expand(-1, 4, -1, -1), test[1]) for s in range(4)])
    print("Dice matrix", matrix.tolist(), "rater-blind", blind.tolist())
    own = matrix.diag()
    # each one-hot output follows its own rater: better than the other outputs do, and than the rater-blind
    # U-Net on the raters furthest from the consensus (conservative A1, liberal A3)
    assert own.mean() > matrix[~torch.eye(4, dtype=torch.bool)].mean() + 0.1, matrix
    assert own[0] > blind[0] + 0.1 and own[2] > blind[2] + 0.15, (blind, own)
    assert own.mean() > blind.mean() + 0.05, (blind, own)
    areas = (personalized > 0).float().mean((0, 2, 3))
    assert areas[0] < areas[1] < areas[2], areas
    # the calibrated (equal-weight) map lies between the most conservative and the most liberal rater
    rater_areas = test[1].mean((0, 2, 3))
    calibrated_area = (calibrated > 0).float().mean()
    print("areas: outputs", areas.tolist(), "calibrated", calibrated_area.item(), "raters", rater_areas.tolist())
    assert rater_areas.min() < calibrated_area < rater_areas.max(), (calibrated_area, rater_areas)
    assert areas[0] < calibrated_area < areas[2], (calibrated_area, areas)
