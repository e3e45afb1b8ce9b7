"""TAB: the loss by hand, absent raters, output groups, the consensus draws by hand, fixed sampling,
TorchScript, clear errors, and rater styles learned on synthetic raters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multirater_monai.data import FuseRatersd
from multirater_monai.networks import TAB, BackboneConfig, FusionUNet
from multirater_monai.networks.blocks import tiled_pixel_noise
from multirater_monai.utils.errors import MultiRaterDataError

from .synthetic_batches import dice_per_output, fit, synthetic_tensors

SMALL = BackboneConfig(channels=(8, 16, 32), feature_channels=8)


def _net(**kwargs) -> TAB:
    torch.manual_seed(0)
    return TAB.build(**{"num_raters": 3, "backbone": SMALL, "embed_dim": 16, "num_samples": 5, **kwargs})


def _batch(raters: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 1, size, size, generator=g), (torch.rand(2, raters, size, size, generator=g) > 0.5).float()


def _fixed_gaussians(net: TAB, mean: torch.Tensor, sigma: float = 1e-6) -> None:
    """Replace the predicted Gaussians by ``mean`` (B, Q, H, W), a tiny sigma and zero factors."""
    factors = torch.zeros(*mean.shape[:2], net.rank, *mean.shape[2:])
    net.query_gaussians = lambda features: (mean, torch.full_like(mean, sigma), factors)


def test_architecture_has_r_plus_1_queries_and_rank_r_plus_1():
    net = _net()
    assert net.queries.shape == (4, 16) and net.rank == 4
    mean, sigma, factors = net.query_gaussians(net.backbone(_batch()[0]))
    assert mean.shape == sigma.shape == (2, 4, 16, 16) and factors.shape == (2, 4, 4, 16, 16)
    assert bool((sigma > 0).all())
    assert _net(rank=2).rank == 2


def test_loss_by_hand_logits_zero_gives_ln2_per_term():
    # every logit 0: each cross entropy is ln 2 whatever the mask, so consensus = rater = ln 2
    net = _net(rater_weight=0.5)
    image, label = _batch()
    _fixed_gaussians(net, torch.zeros(2, 4, 16, 16))
    terms = net.training_objective(image, label)
    assert terms["consensus"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert terms["rater"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert terms["loss"].item() == pytest.approx(1.5 * math.log(2), rel=1e-5)


def test_loss_is_consensus_vs_every_present_rater_plus_each_rater_vs_its_own():
    net = _net(rater_weight=2.0)
    image, label = _batch()
    g = torch.Generator().manual_seed(5)
    mean = 3 * torch.randn(2, 4, 16, 16, generator=g)
    _fixed_gaussians(net, mean)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    pairs = [(b, r) for b in range(2) for r in range(3) if mask[b, r]]
    consensus = sum(F.binary_cross_entropy_with_logits(mean[b, 0], label[b, r]) for b, r in pairs) / 4
    rater = sum(F.binary_cross_entropy_with_logits(mean[b, 1 + r], label[b, r]) for b, r in pairs) / 4
    terms = net.training_objective(image, label, mask)
    assert terms["consensus"].item() == pytest.approx(consensus.item(), rel=1e-4)
    assert terms["rater"].item() == pytest.approx(rater.item(), rel=1e-4)
    assert terms["loss"].item() == pytest.approx((consensus + 2 * rater).item(), rel=1e-4)
    # an absent rater's (garbage) mask changes nothing
    garbage = label.clone()
    garbage[0, 1] = 1 - garbage[0, 1]
    assert net.training_objective(image, garbage, mask)["loss"].item() == pytest.approx(terms["loss"].item(), rel=1e-6)


def test_output_groups_and_consensus_draws_by_hand():
    net = _net().eval()
    image, _ = _batch()
    with torch.no_grad():
        mean, sigma, factors = net.query_gaussians(net.backbone(image))
        net.set_output_mode("personalized+consensus+samples")
        out = net(image)
    assert net.output_groups() == {"personalized": 3, "consensus": 1, "samples": 5}
    torch.testing.assert_close(out[:, :3], mean[:, 1:])
    torch.testing.assert_close(out[:, 3:4], mean[:, :1])
    # draw s: mu_0 + sigma_0 * pixel_noise[s] + sum_k U_0k * factor_noise[s, k]
    noise = tiled_pixel_noise(net.pixel_noise, 16, 16)
    for s in range(5):
        by_hand = mean[:, 0] + sigma[:, 0] * noise[s] + torch.einsum("bkhw,k->bhw", factors[:, 0], net.factor_noise[s])
        torch.testing.assert_close(out[:, 4 + s], by_hand)
    parts = net.split_outputs(out[0])
    assert set(parts) == {"personalized", "consensus", "samples", "calibrated"}
    assert torch.equal(parts["calibrated"], parts["consensus"])
    net.set_output_mode("personalized")
    torch.testing.assert_close(net.split_outputs(out[0, :3])["calibrated"], torch.sigmoid(out[0, :3]).mean(0, keepdim=True))
    net.set_output_mode("consensus")
    alone = net.split_outputs(out[0, 3:4])  # the consensus given to every rater (the AVAP-style tables read it)
    assert torch.equal(alone["personalized"], alone["consensus"].expand(3, -1, -1))


def test_fixed_sampling_is_reproducible_and_seeded():
    net = _net(output_mode="samples").eval()
    image, _ = _batch()
    with torch.no_grad():
        first, again = net(image), net(image)
        net.set_sampling(sample_seed=1)
        other_seed = net(image)
        net.set_sampling(num_samples=7, sample_seed=0)
        seven, seven_again = net(image), net(image)
        net.set_sampling(sample_seed=None)
        fresh1, fresh2 = net(image), net(image)
    assert torch.equal(first, again) and seven.shape[1] == 7 and net.num_samples == 7
    assert torch.equal(seven, seven_again) and not torch.allclose(other_seed, first)
    assert not torch.allclose(fresh1, fresh2)


def test_torchscript_reproduces_every_output_mode():
    net = _net().eval()
    image, _ = _batch()
    for mode in TAB.output_modes:
        net.set_output_mode(mode)
        with torch.no_grad():
            torch.testing.assert_close(torch.jit.script(net)(image), net(image))


def test_clear_errors_on_bad_batches_and_settings():
    net = _net()
    image, label = _batch()
    with pytest.raises(MultiRaterDataError, match="num_raters"):
        net.training_objective(image, label[:, :2])
    with pytest.raises(MultiRaterDataError, match="rater_mask all False"):
        net.training_objective(image, label, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="output_mode"):
        net.set_output_mode("prior")
    with pytest.raises(ValueError, match="multiple of num_heads"):
        _net(embed_dim=10)
    with pytest.raises(ValueError, match="2D"):
        TAB.build(backbone=BackboneConfig(spatial_dims=3))


@pytest.mark.slow
def test_learns_rater_styles_better_than_a_rater_blind_unet():
    """Synthetic raters (A1 conservative, A2 smooth, A3 liberal, A4 noisy) at 32x32, 150 steps; about 20 s on one core.

    Measured (seed 0, test split of 32): majority-vote U-Net Dice per rater [0.66, 0.89, 0.67, 0.77]; TAB
    [0.73, 0.89, 0.89, 0.77]; output areas 0.033 < 0.072 < 0.130 (raters 0.037, 0.075, 0.141); consensus
    mean area 0.073; d_pp of 16 consensus draws 0.10.
    """
    train, test = synthetic_tensors(64, 0, 32), synthetic_tensors(32, 1, 32)
    torch.manual_seed(0)
    net = TAB.build(num_raters=4, backbone=SMALL, num_samples=16)
    fit(net, train, 150)
    torch.manual_seed(0)
    majority = FusionUNet.build(num_raters=4, backbone=BackboneConfig(channels=(8, 16, 32)))
    fused = FuseRatersd(method="majority")
    votes = torch.stack([fused({"label": y, "rater_mask": m})["label"] for y, m in zip(train[1], train[2])])
    fit(majority, train, 150, target=votes)
    net.eval()
    with torch.no_grad():
        personalized = net(test[0])
        blind = dice_per_output(majority.eval()(test[0]).expand(-1, 4, -1, -1), test[1])
        net.set_output_mode("consensus")
        consensus_area = (net(test[0]) > 0).float().mean()
        net.set_output_mode("samples")
        samples = (net(test[0]) > 0).float()
    per_rater = dice_per_output(personalized, test[1])
    # the raters furthest from the consensus (conservative A1, liberal A3) are where a query of one's own pays
    assert per_rater[0] > blind[0] + 0.03 and per_rater[2] > blind[2] + 0.1, (blind, per_rater)
    assert per_rater.mean() > blind.mean() + 0.05, (blind, per_rater)
    areas = (personalized > 0).float().mean((0, 2, 3))
    assert areas[0] < areas[1] < areas[2], areas
    # the consensus lies between the most conservative and the most liberal rater, area-wise
    rater_areas = test[1].mean((0, 2, 3))
    assert rater_areas.min() < consensus_area < rater_areas.max(), (consensus_area, rater_areas)
    # the consensus draws differ from one another (d_pp > 0)
    inter = torch.einsum("bshw,bthw->bst", samples, samples)
    area = samples.sum((-1, -2))
    union = area[:, :, None] + area[:, None, :] - inter
    d_pp = (1 - torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))).mean()
    assert d_pp > 0.03, d_pp
