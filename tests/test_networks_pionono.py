"""Pionono: the KL in closed form, the loss by hand, absent raters, the optimiser groups, output modes,
fixed sampling, TorchScript, clear errors, and rater styles learned on synthetic raters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from multirater_monai.networks import BackboneConfig, Pionono
from multirater_monai.networks.nets.pionono import gaussian_kl_to_isotropic
from multirater_monai.utils.errors import MultiRaterDataError

from .synthetic_batches import dice_per_output, synthetic_tensors

SMALL = BackboneConfig(channels=(8, 16, 32), feature_channels=8)


def _net(**kwargs) -> Pionono:
    torch.manual_seed(0)
    options = {"num_raters": 3, "backbone": SMALL, "head_hidden": 8, "num_samples": 5, **kwargs}
    return Pionono.build(**options)


def _batch(raters: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 1, size, size, generator=g), (torch.rand(2, raters, size, size, generator=g) > 0.5).float()


def test_kl_equals_the_closed_form_against_n_0_4i():
    mu = torch.tensor([[0.0, 1.0, -3.0], [2.0, 0.5, 0.0]])
    sigma = torch.tensor([[2.0, 0.1, 1.0], [0.5, 3.0, 2.0]])
    # KL(N(m, s^2) || N(0, 4)) = log(2 / s) + (s^2 + m^2) / 8 - 1/2 per dimension
    by_hand = (torch.log(2.0 / sigma) + (sigma**2 + mu**2) / 8 - 0.5).sum(-1)
    torch.testing.assert_close(gaussian_kl_to_isotropic(mu, sigma.log(), 2.0), by_hand)
    torch.testing.assert_close(by_hand, kl_divergence(Normal(mu, sigma), Normal(0.0, 2.0)).sum(-1))
    # row 0: dimension 1 is the prior itself (KL 0)
    assert by_hand[0].item() == pytest.approx(math.log(20) + 1.01 / 8 - 0.5 + math.log(2) + 10 / 8 - 0.5)

    net = _net(latent_dim=3, num_raters=2)
    with torch.no_grad():
        net.latent_mean.copy_(mu)
        net.latent_log_sigma.copy_(sigma.log())
    terms = net.training_objective(*_batch(raters=2))
    assert terms["kl"].item() == pytest.approx(by_hand.mean().item(), rel=1e-6)  # mean over the raters
    assert terms["loss"].item() == pytest.approx(
        (terms["seg"] + 5e-4 * terms["kl"] + 1e-5 * terms["l2"]).item(), rel=1e-6)


def test_loss_equals_each_present_rater_against_its_own_mask():
    """With sigma ~ 0 every Monte-Carlo code of rater r is mu_r: seg is then the mean, over the present
    (image, rater) pairs, of the cross entropy of the personalized output r against rater r's mask."""
    net = _net(kl_weight=0.0, l2_weight=0.0)
    with torch.no_grad():
        net.latent_log_sigma.fill_(-30.0)
    image, label = _batch()
    mask = torch.tensor([[True, False, True], [False, True, True]])
    with torch.no_grad():
        net.eval()
        personalized = net(image)
        per_pair = F.binary_cross_entropy_with_logits(personalized, label, reduction="none").mean((2, 3))
        expected = per_pair[mask].mean()
        seg = net.training_objective(image, label, mask)["seg"]  # eval mode: the same BatchNorm statistics
    assert seg.item() == pytest.approx(expected.item(), rel=1e-5)
    # Dice variant: one minus the smoothed soft Dice per pair
    net.seg_loss = "dice"
    with torch.no_grad():
        prob = torch.sigmoid(personalized)
        dice = (2 * (prob * label).sum((2, 3)) + 1) / (prob.sum((2, 3)) + label.sum((2, 3)) + 1)
        seg = net.training_objective(image, label, mask)["seg"]
    assert seg.item() == pytest.approx((1 - dice)[mask].mean().item(), rel=1e-5)


def test_absent_raters_do_not_change_the_loss():
    net = _net().eval()
    image, label = _batch()
    mask = torch.tensor([[True, False, True], [True, True, False]])
    other = label.clone()
    other[0, 1] = 1 - other[0, 1]  # whatever the absent raters' channels hold
    other[1, 2] = 1.0
    torch.manual_seed(5)
    first = net.training_objective(image, label, mask)
    torch.manual_seed(5)  # the same Monte-Carlo codes
    second = net.training_objective(image, other, mask)
    for key in ("loss", "seg", "kl"):
        assert first[key].item() == second[key].item(), key
    torch.manual_seed(5)
    assert net.training_objective(image, other)["loss"].item() != first["loss"].item()  # present: it counts


def test_rater_gaussians_get_the_higher_learning_rate():
    net = _net()
    groups = net.parameter_groups(1e-4, 2e-2)
    assert [g["lr"] for g in groups] == [1e-4, 2e-2]
    latent = {id(net.latent_mean), id(net.latent_log_sigma)}
    assert {id(p) for p in groups[1]["params"]} == latent
    network = {id(p) for p in groups[0]["params"]}
    assert not network & latent
    assert network | latent == {id(p) for p in net.parameters()}
    optimizer = torch.optim.Adam(groups, lr=1e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 2e-2]
    # one Adam step moves each parameter by about its group's learning rate
    before_mu, before_w = net.latent_mean.detach().clone(), net.head.combine.weight.detach().clone()
    net.train().training_objective(*_batch())["loss"].backward()
    optimizer.step()
    assert (net.latent_mean - before_mu).abs().max().item() == pytest.approx(2e-2, rel=0.05)
    assert (net.head.combine.weight - before_w).abs().max().item() == pytest.approx(1e-4, rel=0.05)


def test_outputs_personalized_means_and_fixed_mixture_samples():
    net = _net(num_samples=400).eval()
    image, _ = _batch()
    with torch.no_grad():
        personalized = net(image)
        assert personalized.shape == (2, 3, 16, 16) and net.output_groups() == {"personalized": 3}
        features = net.backbone(image)
        torch.testing.assert_close(personalized, net.head(features, net.latent_mean.expand(2, -1, -1)))
        net.set_output_mode("samples")
        samples = net(image)
        assert samples.shape == (2, 400, 16, 16)
        torch.testing.assert_close(samples, net(image))  # fixed draws: reproducible
        net.set_output_mode("personalized+samples")
        both = net(image)
        assert net.output_groups() == {"personalized": 3, "samples": 400}
        torch.testing.assert_close(both, torch.cat([personalized, samples], 1))
        groups = net.split_outputs(both[0])
        torch.testing.assert_close(groups["personalized"], torch.sigmoid(personalized[0]))
        assert groups["samples"].shape == (400, 16, 16)
        # the mixture: raters drawn uniformly, codes from the drawn rater's Gaussian
        counts = torch.bincount(net.sample_raters, minlength=3).float() / 400
        assert (counts - 1 / 3).abs().max() < 0.06, counts
        codes = net._mixture_codes()
        torch.testing.assert_close(codes, net.latent_mean[net.sample_raters] + 0.1 * net.sample_noise)
        net.set_sampling(num_samples=7, sample_seed=None)  # fresh draws at every call
        net.set_output_mode("samples")
        assert net(image).shape[1] == 7 and not torch.equal(net(image), net(image))
        net.set_sampling(sample_seed=3)
        torch.testing.assert_close(net(image), net(image))


def test_shared_latent_is_rater_blind():
    net = _net(shared_latent=True).eval()
    assert net.latent_mean.shape == (1, 8)
    with torch.no_grad():
        out = net(_batch()[0])
    torch.testing.assert_close(out[:, 0], out[:, 2])


def test_torchscript_reproduces_every_output_mode():
    net = _net().eval()
    image, _ = _batch()
    for mode in ("personalized", "samples", "personalized+samples"):
        net.set_output_mode(mode)
        with torch.no_grad():
            expected = net(image)
            scripted = torch.jit.script(net)
            traced = torch.jit.trace(net, image)
            torch.testing.assert_close(scripted(image), expected)
            torch.testing.assert_close(traced(image), expected)


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
    with pytest.raises(ValueError, match="seg_loss"):
        _net(seg_loss="bce")
    with pytest.raises(ValueError, match="output_mode"):
        net.set_output_mode("prior")
    with pytest.raises(ValueError, match="kl_weight"):
        _net(kl_weight=-1.0)


def _train_on_synthetic_raters(shared_latent: bool = False, steps: int = 300) -> Pionono:
    torch.manual_seed(0)
    net = Pionono.build(num_raters=4, backbone=SMALL, head_hidden=16, num_samples=16, shared_latent=shared_latent)
    data = synthetic_tensors(64, 0, 32)
    optimizer = torch.optim.Adam(net.parameter_groups(3e-3, 3e-2))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, 64, (16,), generator=g)
        loss = net.train().training_objective(data[0][idx], data[1][idx], data[2][idx])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.mark.slow
def test_learns_distinct_rater_styles_on_synthetic_raters():
    """Synthetic raters (A1 conservative, A2 smooth, A3 liberal, A4 noisy) at 32x32, 300 steps for Pionono and
    for the same network with one shared latent (rater-blind); about 40 s on 2 cores.

    Measured (seed 0): output-vs-rater Dice matrix diagonal [0.83, 0.91, 0.91, 0.78], mean off-diagonal 0.64;
    rater-blind per-rater Dice [0.72, 0.87, 0.61, 0.75] (mean 0.74 against 0.86); rater means 9.3-11.6 apart
    with sigmas at most 2.0; d_pp of 16 mixture samples 0.31.
    """
    test = synthetic_tensors(32, 1, 32)
    net, blind = _train_on_synthetic_raters(), _train_on_synthetic_raters(shared_latent=True)
    with torch.no_grad():
        out = net(test[0])
        matrix = torch.stack([dice_per_output(out[:, s:s + 1].expand(-1, 4, -1, -1), test[1]) for s in range(4)])
        personalized, rater_blind = matrix.diag(), dice_per_output(blind(test[0]), test[1])
        means, sigmas = net.rater_means(), net.rater_sigmas()
        net.set_output_mode("samples")
        samples = (net(test[0]) > 0).float()
    print("Dice matrix", matrix.tolist(), "rater-blind", rater_blind.tolist())
    # the raters' Gaussians are apart: every pair of means further apart than 3 x the largest sigma
    distance = torch.cdist(means, means)
    assert distance[~torch.eye(4, dtype=torch.bool)].min() > 3 * sigmas.max(), (distance, sigmas)
    # each output follows its own rater best: on average, and for the most distinct raters (A1 vs A3)
    off_diagonal = matrix[~torch.eye(4, dtype=torch.bool)].mean()
    assert personalized.mean() > off_diagonal + 0.1, matrix
    assert matrix[0, 0] > matrix[2, 0] + 0.2 and matrix[2, 2] > matrix[0, 2] + 0.2, matrix
    assert (personalized >= matrix.max(0).values - 0.02).all(), matrix  # no output beats rater r's own on r
    # better than the rater-blind network, on average and for the conservative rater A1
    assert personalized.mean() > rater_blind.mean() + 0.07, (personalized, rater_blind)
    assert personalized[0] > rater_blind[0] + 0.05, (personalized, rater_blind)
    # the mixture samples differ from one another (d_pp > 0)
    inter = torch.einsum("bshw,bthw->bst", samples, samples)
    area = samples.sum((-1, -2))
    union = area[:, :, None] + area[:, None, :] - inter
    d_pp = (1 - torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))).mean()
    assert d_pp > 0.05, d_pp
