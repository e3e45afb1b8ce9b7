"""CM-Global and CM-Pixel (ConfusionMatrixNet): the loss by hand, row-normalised matrices, absent raters,
TorchScript, clear errors, and CM-Global recovering known rater confusions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multirater_monai.data import make_synthetic_sample
from multirater_monai.networks import BackboneConfig, ConfusionMatrixNet
from multirater_monai.utils.errors import MultiRaterDataError

SMALL = BackboneConfig(channels=(8, 16, 32), feature_channels=8)
RATER_1 = [[0.9, 0.1], [0.2, 0.8]]  # rows: true background, true foreground
RATER_2 = [[0.6, 0.4], [0.3, 0.7]]


def _hand_net(mode: str = "global") -> ConfusionMatrixNet:
    """Two raters, p(foreground) = 0.8 at every pixel, the matrices RATER_1 and RATER_2 (global mode)."""
    net = ConfusionMatrixNet(nn.Identity(), num_raters=2, feature_channels=1, mode=mode, trace_weight=0.01)
    with torch.no_grad():
        net.segmentation_head.weight.zero_()
        net.segmentation_head.bias.copy_(torch.tensor([0.0, math.log(4.0)]))  # softmax: (0.2, 0.8)
        if mode == "global":
            net.cm_logits.copy_(torch.log(torch.tensor([[RATER_1, RATER_2]])))
    return net


def test_loss_and_outputs_equal_a_computation_by_hand():
    net = _hand_net()
    image = torch.zeros(1, 1, 1, 2)  # two pixels
    label = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # rater 1 draws (1, 0), rater 2 (0, 1)
    # p_1(fg) = 0.2 * 0.1 + 0.8 * 0.8 = 0.66; p_2(fg) = 0.2 * 0.4 + 0.8 * 0.7 = 0.64
    cross_entropy = -(math.log(0.66) + math.log(0.34) + math.log(0.36) + math.log(0.64)) / 4
    trace = ((0.9 + 0.8) + (0.6 + 0.7)) / 2
    out = net.training_objective(image, label)
    assert out["cross_entropy"].item() == pytest.approx(cross_entropy, rel=1e-5)
    assert out["trace"].item() == pytest.approx(trace, rel=1e-5)
    assert out["loss"].item() == pytest.approx(cross_entropy + 0.01 * trace, rel=1e-5)
    personalized = net.eval()(image)
    assert torch.allclose(personalized[0, :, 0, 0], torch.tensor([math.log(0.66 / 0.34), math.log(0.64 / 0.36)]))
    net.set_output_mode("true_label")
    assert net(image)[0, 0, 0, 0].item() == pytest.approx(math.log(4.0), rel=1e-5)


def test_absent_raters_take_no_part_in_the_loss():
    net = _hand_net()
    image = torch.zeros(1, 1, 1, 2)
    label = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    only_first = torch.tensor([[True, False]])
    out = net.training_objective(image, label, only_first)
    assert out["loss"].item() == pytest.approx(-(math.log(0.66) + math.log(0.34)) / 2 + 0.01 * 1.7, rel=1e-5)
    other = label.clone()
    other[:, 1] = 1 - other[:, 1]  # whatever the absent rater's channel holds
    assert net.training_objective(image, other, only_first)["loss"].item() == out["loss"].item()
    out["loss"].backward()
    assert net.cm_logits.grad[0, 1].abs().max().item() == 0.0 and net.cm_logits.grad[0, 0].abs().max().item() > 0
    # CM-Pixel, a random network: the absent rater's channel changes nothing either
    torch.manual_seed(0)
    pixel = ConfusionMatrixNet.build(num_raters=3, num_structures=2, backbone=SMALL, mode="pixel")
    image, stack = torch.rand(2, 1, 16, 16), (torch.rand(2, 6, 16, 16) > 0.5).float()
    mask = torch.tensor([[True, False, True], [True, True, False]])  # (B, R): expanded to both structures
    changed = stack.clone()
    changed[0, [1, 4]] = 1 - changed[0, [1, 4]]
    changed[1, [2, 5]] = 1 - changed[1, [2, 5]]
    a, b = pixel.training_objective(image, stack, mask), pixel.training_objective(image, changed, mask)
    assert a["loss"].item() == b["loss"].item()
    assert a["loss"].item() != pixel.training_objective(image, changed)["loss"].item()


# The starts by hand: global exp(4) / (exp(4) + 1); pixel softplus(1) / (softplus(1) + softplus(0)), the
# normalised softplus'd identity the global matrices of Zhang et al.'s code start from
STARTS = {"global": math.exp(4) / (math.exp(4) + 1),
          "pixel": math.log1p(math.e) / (math.log1p(math.e) + math.log(2.0))}


@pytest.mark.parametrize("mode", ["global", "pixel"])
def test_every_confusion_matrix_is_2x2_with_rows_summing_to_one_and_starts_on_the_diagonal(mode):
    assert STARTS == pytest.approx({"global": 0.982, "pixel": 0.654}, abs=1e-3)
    torch.manual_seed(0)
    net = ConfusionMatrixNet.build(num_raters=3, num_structures=2, backbone=SMALL, mode=mode)
    image = torch.rand(2, 1, 16, 16)
    cm = net.confusion_matrices(image)
    row_dim = 4 if mode == "pixel" else 3
    assert cm.shape[:row_dim + 1][-4:] == (2, 3, 2, 2)  # K, R, true class, rater's class
    assert torch.allclose(cm.sum(row_dim), torch.ones(()), atol=1e-6)
    diagonal = torch.diagonal(cm, dim1=row_dim - 1, dim2=row_dim)
    assert torch.allclose(diagonal, torch.tensor(STARTS[mode]), atol=1e-6)
    # training moves them and keeps them row-normalised
    optimizer = torch.optim.Adam(net.parameters_to_train(), lr=0.05)
    for _ in range(3):
        loss = net.training_objective(image, (torch.rand(2, 6, 16, 16) > 0.5).float())["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cm = net.confusion_matrices(image)
    assert torch.allclose(cm.sum(row_dim), torch.ones(()), atol=1e-6)
    assert not torch.allclose(torch.diagonal(cm, dim1=row_dim - 1, dim2=row_dim), torch.tensor(STARTS[mode]), atol=1e-3)


def test_output_groups_and_calibrated_map():
    net = ConfusionMatrixNet.build(num_raters=3, num_structures=2, backbone=SMALL).eval()
    image = torch.rand(1, 1, 16, 16)
    per_rater = net(image)
    assert per_rater.shape == (1, 6, 16, 16) and net.output_groups() == {"personalized": 6}
    out = net.split_outputs(per_rater[0])
    assert torch.allclose(out["calibrated"][1], torch.sigmoid(per_rater[0, 3:]).mean(0))
    net.set_output_mode("personalized+true_label")
    both = net(image)
    assert net.output_groups() == {"personalized": 6, "consensus": 2} and torch.allclose(both[:, :6], per_rater)
    out = net.split_outputs(both[0])
    assert torch.equal(out["calibrated"], out["consensus"])
    assert torch.allclose(out["consensus"], torch.sigmoid(both[0, 6:]))
    net.set_output_mode("true_label")
    out = net.split_outputs(net(image)[0])
    assert torch.equal(out["personalized"][3:], out["consensus"][1:].expand(3, -1, -1))  # structure 2, A1..A3


@pytest.mark.parametrize("mode", ["global", "pixel"])
def test_torchscript_export_reproduces_every_output_mode(mode, tmp_path):
    net = ConfusionMatrixNet.build(num_raters=3, backbone=SMALL, mode=mode).eval()
    image = torch.rand(2, 1, 16, 16)
    for output_mode in net.output_modes:
        net.set_output_mode(output_mode)
        torch.jit.save(torch.jit.script(net), tmp_path / "net.ts")
        with torch.no_grad():
            assert torch.allclose(torch.jit.load(tmp_path / "net.ts")(image), net(image), atol=1e-6)


def test_bad_input_gives_clear_errors():
    net = ConfusionMatrixNet.build(num_raters=3, num_structures=2, backbone=SMALL)
    image = torch.rand(1, 1, 16, 16)
    with pytest.raises(MultiRaterDataError, match=r"K x R = 2 x 3"):
        net.training_objective(image, torch.zeros(1, 3, 16, 16))
    with pytest.raises(MultiRaterDataError, match="does not match image"):
        net.training_objective(image, torch.zeros(1, 6, 8, 8))
    with pytest.raises(MultiRaterDataError, match="rater_mask"):
        net.training_objective(image, torch.zeros(1, 6, 16, 16), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(MultiRaterDataError, match="no rater annotated"):
        net.training_objective(image, torch.zeros(1, 6, 16, 16), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="trace_weight must be >= 0"):
        ConfusionMatrixNet.build(num_raters=3, backbone=SMALL, trace_weight=-0.01)
    with pytest.raises(ValueError, match="mode must be one of"):
        ConfusionMatrixNet.build(num_raters=3, backbone=SMALL, mode="row")


# ---------------------------------------------------------------------------------------- learning
# Rater r flips each pixel independently given the clean label: (P(fg | true bg), P(bg | true fg)). This is
# the noise CM-Global models (one confusion per rater, whatever the pixel), so the flip rates are the answer.
# Every rater misses most of the object, so the majority vote marks only 25 % of it: a network trained on
# the vote learns p(fg) < 0.5 inside the object, while the raters still separate object from background
# (the mean over raters of P(fg | fg) - P(fg | bg) is positive: the condition under which the minimal-trace
# solution is the true one). With milder noise (30 % flips) the vote of three raters is already right where
# it counts, and a network trained on it thresholds to the clean mask: such data cannot tell the methods apart.
FLIPS = ((0.05, 0.6), (0.1, 0.7), (0.0, 0.7))


def _confused_raters(n: int, seed: int, size: int = 32):
    """(image, rater stack, rater mask, clean mask) of ``n`` synthetic images and the raters of FLIPS."""
    samples = [make_synthetic_sample(np.random.default_rng([seed, i]), size=size) for i in range(n)]
    clean = np.stack([s["prob"][0] >= 0.5 for s in samples])
    draws = np.random.default_rng(seed).random((len(FLIPS),) + clean.shape)
    raters = np.stack([np.where(clean, u >= miss, u < false_fg) for u, (false_fg, miss) in zip(draws, FLIPS)], 1)
    image = torch.from_numpy(np.stack([s["image"] for s in samples]))
    return (image, torch.from_numpy(raters.astype(np.float32)), torch.ones(n, len(FLIPS), dtype=torch.bool),
            torch.from_numpy(clean[:, None].astype(np.float32)))


def _fit(net, data, steps: int, loss_fn=None, lr: float = 1e-2) -> None:
    optimizer = torch.optim.Adam(net.parameters_to_train(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, data[0].shape[0], (16,), generator=g)
        net.train()
        loss = (net.training_objective(data[0][idx], data[1][idx], data[2][idx])["loss"] if loss_fn is None
                else loss_fn(net, idx))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _dice(logits: torch.Tensor, clean: torch.Tensor) -> float:
    pred = (logits > 0).float()
    return (2 * (pred * clean).sum() / (pred.sum() + clean.sum())).item()


@pytest.fixture(scope="module")
def confused_data():
    """(train, test): 64 and 32 images with the raters of FLIPS."""
    return _confused_raters(64, 0), _confused_raters(32, 1)


@pytest.fixture(scope="module")
def majority_vote_dice(confused_data) -> float:
    """Dice against the clean mask of a network trained on the raters' majority vote (400 steps): 0.26."""
    train, test = confused_data
    votes = (train[1].sum(1, keepdim=True) >= 2).float()
    torch.manual_seed(0)
    majority = ConfusionMatrixNet.build(num_raters=1, backbone=SMALL, output_mode="true_label")
    _fit(majority, train, 400,
         loss_fn=lambda m, idx: F.binary_cross_entropy_with_logits(m(train[0][idx]), votes[idx]))
    with torch.no_grad():
        return _dice(majority.eval()(test[0]), test[3])


def test_cm_global_recovers_known_rater_confusions_and_beats_the_majority_vote(confused_data, majority_vote_dice):
    """400 steps each at 32x32, ~15 s on one core. Trace weight 0.03 (the bundles use Tanno's 0.01, which
    converges more slowly: after 1200 steps P(bg | fg) is 0.30 / 0.75 / 0.63 and the Dice of p 0.63).

    Measured (seed 0): learned (P(fg | bg), P(bg | fg)) (0.044, 0.63), (0.101, 0.74), (0.001, 0.77) for
    the true (0.05, 0.6), (0.1, 0.7), (0.0, 0.7); Dice of p with the clean mask 0.84, of the majority-vote
    network 0.26. With the trace maximised instead: every P(bg | fg) about 0.001, Dice of p 0.26.
    """
    train, test = confused_data
    torch.manual_seed(0)
    net = ConfusionMatrixNet.build(num_raters=3, backbone=SMALL, mode="global", trace_weight=0.03)
    _fit(net, train, 400)
    confusion = net.confusion_matrices()[0].detach()  # (R, 2, 2)
    learned = torch.stack([confusion[:, 0, 1], confusion[:, 1, 0]], 1)
    assert torch.allclose(learned, torch.tensor(FLIPS), atol=0.1), learned

    net.set_output_mode("true_label")
    with torch.no_grad():
        dice_p = _dice(net.eval()(test[0]), test[3])
    assert dice_p > 0.75 and dice_p > majority_vote_dice + 0.3, (dice_p, majority_vote_dice)


def _pixel_flip_rates(confusion: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``(R, 2)``: per rater, CM-Pixel's P(fg | bg) averaged over the clean background and P(bg | fg) over
    the clean object; ``confusion`` ``(B, R, 2, 2, H, W)``, ``clean`` ``(B, H, W)`` bool."""
    false_fg = confusion[:, :, 0, 1].transpose(0, 1)  # (R, B, H, W)
    missed = confusion[:, :, 1, 0].transpose(0, 1)
    return torch.stack([false_fg[:, ~clean].mean(-1), missed[:, clean].mean(-1)], 1)


@pytest.mark.slow
def test_cm_pixel_recovers_known_rater_confusions_and_beats_the_majority_vote(confused_data, majority_vote_dice):
    """CM-Pixel on CM-Global's raters, with the bundle's settings: trace weight 0.01, the pixel start
    0.639 (rows 0.654; CM_INIT_DIAGONAL["pixel"] to three decimals; with the exact default it passes
    too). 400 steps at 32x32 (+ the majority-vote network, shared with the CM-Global test): ~20 s on
    one core, ~33 s with the majority-vote network.

    The noise is the same at every pixel, so each rater's per-pixel matrices, averaged over the clean
    background (P(fg | bg)) and the clean object (P(bg | fg)), must come back as the flip rates FLIPS.
    Measured (seed 0): (0.056, 0.66), (0.110, 0.74), (0.001, 0.74) for the true (0.05, 0.6), (0.1, 0.7),
    (0.0, 0.7); Dice of p with the clean mask 0.76, of the majority-vote network 0.26. The start decides
    (same run, other starts): 4.0 (CM-Global's, rows 0.982): P(bg | fg) 0.03 / 0.17 / 0.33, Dice of p
    0.44, fails; 0.0 (uniform rows, about the random start of Zhang et al.'s pixel head): Dice of p
    0.14, fails.

    The trace's sign cannot fail this test at a test-size budget, so the test does not claim it. With
    the trace maximised (``net.trace_weight = -0.01`` after building, 400 steps): flip rates (0.046,
    0.66), (0.099, 0.74), (0.001, 0.73), Dice of p 0.76, and even the rows p does not use (P(fg | bg)
    on the object 0.22 / 0.23 / 0.09 against 0.26 / 0.24 / 0.07 minimised; P(bg | fg) on the background
    0.98-1.0 both ways) do not move. Stronger weights, start 0.64, minimised / maximised: Dice of p
    0.70 / 0.74 at 0.1, 0.80 / 0.68 at 1.0, 0.69 without the trace; the flip rates within 0.05 in every
    case. Per pixel the cross entropy fixes the
    used rows and p from the start's side of the label permutation; the trace could only act through
    the unused rows, which the per-pixel head sets freely (module docstring of confusion_matrix_net).
    What distinguishes the method here is asserted: the per-pixel matrices carry each rater's noise, and
    p, freed of it, beats the majority vote by 0.3.
    """
    train, test = confused_data
    torch.manual_seed(0)
    net = ConfusionMatrixNet.build(num_raters=3, backbone=SMALL, mode="pixel", trace_weight=0.01,
                                   cm_init_diagonal=0.639)
    _fit(net, train, 400)
    net.eval()
    with torch.no_grad():
        learned = _pixel_flip_rates(net.confusion_matrices(test[0])[:, 0], test[3][:, 0].bool())
        net.set_output_mode("true_label")
        dice_p = _dice(net(test[0]), test[3])
    assert torch.allclose(learned, torch.tensor(FLIPS), atol=0.1), learned
    assert dice_p > 0.6 and dice_p > majority_vote_dice + 0.3, (dice_p, majority_vote_dice)
