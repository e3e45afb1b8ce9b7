"""ProSeg network: loss terms against closed forms, TorchScript, learning on synthetic raters."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Dirichlet, kl_divergence

from multirater_monai.networks import ProSeg, BackboneConfig

from .synthetic_batches import dice_per_output, fit, synthetic_tensors

TINY = dict(backbone=BackboneConfig(channels=(4, 8), feature_channels=4), hidden=8, z_channels=2, num_samples=6)


def _net(**kwargs):
    torch.manual_seed(0)
    return ProSeg.build(num_raters=3, **{**TINY, **kwargs})


def test_kl_terms_match_closed_forms_and_torch_distributions():
    net = _net(rater_encoders=True)
    with torch.no_grad():
        net.tau_embedding.weight.copy_(torch.tensor([[0.5, -1.0, 2.0, 0.0, 0.3, 1.0, -0.2, 0.7]] * 3)
                                       + torch.arange(3.0)[:, None])
    image, label = torch.randn(2, 1, 8, 8), (torch.rand(2, 3, 8, 8) > 0.5).float()
    terms = net.training_objective(image, label)
    # KL(Dir(a) || Dir(1)) by hand: lnG(sum a) - sum lnG(a) - lnG(K) + sum (a - 1)(psi(a) - psi(sum a))
    a = net.tau_concentration().detach()
    k = a.shape[1]
    by_hand = (torch.lgamma(a.sum(1)) - torch.lgamma(a).sum(1) - torch.lgamma(torch.tensor(float(k)))
               + ((a - 1) * (torch.digamma(a) - torch.digamma(a.sum(1, keepdim=True)))).sum(1))
    assert torch.allclose(terms["kl_tau"], by_hand.mean(), atol=1e-5)
    assert torch.allclose(terms["kl_tau"], kl_divergence(Dirichlet(a), Dirichlet(torch.ones_like(a))).mean(), atol=1e-5)
    # KL(N(mu, s) || N(0, 1)) per element = (mu^2 + s^2 - 1) / 2 - ln s, averaged over elements and raters
    mu, log_sigma = net._z_params(net.backbone(image))
    assert mu.shape == (2, 3, 2, 8, 8)  # one q(z_i | x) per rater
    by_hand_z = 0.5 * (mu.pow(2) + torch.exp(2 * log_sigma) - 1) - log_sigma
    assert torch.allclose(terms["kl_z"], by_hand_z.mean(), atol=1e-5)
    # a missing rater's KL takes no part: image 0 without rater 1 -> 5 of the 6 per-rater KLs
    mask = torch.tensor([[True, False, True], [True, True, True]])
    per_rater = by_hand_z.flatten(2).mean(-1)
    expected = (per_rater.sum() - per_rater[0, 1]) / 5
    assert torch.allclose(net.training_objective(image, label, mask)["kl_z"], expected, atol=1e-5)


def test_per_rater_image_encoders_and_prior_samples_use_the_classifiers_rater():
    """``rater_encoders=True`` (the paper's phi_i with their own heads, section 4.2): rater r's personalized output depends on its own head of q(z_r | x)
    only; a prior sample takes z from the encoder of the rater that p(r | tau) names (eq. 11)."""
    net = _net(output_mode="personalized+prior", rater_encoders=True).eval()  # 3 raters, z 2 channels, 6 prior samples
    image = torch.randn(2, 1, 8, 8)

    def outputs_after_changing_encoder(i):
        changed = _net(output_mode="personalized+prior", rater_encoders=True).eval()
        changed.load_state_dict(net.state_dict())
        with torch.no_grad():  # mu and log_sigma channels of encoder i: [i*2, i*2+1] and 6 + [i*2, i*2+1]
            for c in (2 * i, 2 * i + 1, 6 + 2 * i, 6 + 2 * i + 1):
                changed.z_head.weight[c] += 1.0
            return changed(image)

    with torch.no_grad():
        net.classifier[-1].weight.zero_()
        net.classifier[-1].bias.copy_(torch.tensor([0.0, 0.0, 5.0]))  # p(r | tau) names rater 2 for every tau
        base = net(image)
    changed_1 = outputs_after_changing_encoder(1)
    assert torch.equal(changed_1[:, [0, 2]], base[:, [0, 2]])  # raters 0 and 2 do not use encoder 1
    assert not torch.allclose(changed_1[:, 1], base[:, 1])
    assert torch.equal(changed_1[:, 3:], base[:, 3:])  # nor do the prior samples (all named rater 2)
    changed_2 = outputs_after_changing_encoder(2)
    assert not torch.allclose(changed_2[:, 3:], base[:, 3:])
    shared = _net()  # the default: one head for all raters
    assert shared._z_params(shared.backbone(image))[0].shape == (2, 1, 2, 8, 8)


def test_loss_is_the_sum_of_its_terms_and_missing_raters_take_no_part():
    net = _net(recon_weight=2.0, kl_z_weight=0.5)
    image, label = torch.randn(2, 1, 8, 8), (torch.rand(2, 3, 8, 8) > 0.5).float()
    mask = torch.tensor([[True, False, True], [True, True, True]])
    terms = net.training_objective(image, label, mask)
    # the per-rater terms enter divided by the number of pixels (the ELBO per pixel)
    expected = 2.0 * terms["recon"] + terms["seg"] + 0.5 * terms["kl_z"] + (terms["classification"] + terms["kl_tau"]) / 64
    assert torch.allclose(terms["loss"], expected)
    torch.manual_seed(5)
    first = net.training_objective(image, label, mask)["seg"]
    flipped = label.clone()
    flipped[0, 1] = 1 - flipped[0, 1]  # change only the missing rater's mask
    torch.manual_seed(5)
    assert torch.allclose(net.training_objective(image, flipped, mask)["seg"], first)
    terms["loss"].backward()
    assert all(p.grad is not None for p in net.parameters())


def test_ablations_drop_their_terms():
    image, label = torch.randn(2, 1, 8, 8), (torch.rand(2, 3, 8, 8) > 0.5).float()
    no_tau = _net(use_tau=False).training_objective(image, label)
    assert no_tau["kl_tau"] == 0 and no_tau["classification"] == 0 and no_tau["kl_z"] > 0
    no_z = _net(use_z=False).training_objective(image, label)
    assert no_z["kl_z"] == 0 and no_z["recon"] == 0 and no_z["kl_tau"] > 0


@pytest.mark.parametrize("mode", ["personalized", "samples", "prior", "personalized+prior"])
def test_output_modes_and_torchscript(mode, tmp_path):
    net = _net(output_mode=mode).eval()
    image = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = net(image)
        assert out.shape == (2, {"personalized": 3, "personalized+prior": 9}.get(mode, 6), 16, 16)
        if mode == "personalized+prior":  # one pass gives exactly what the two modes give
            net.set_output_mode("personalized")
            personalized = net(image)
            net.set_output_mode("prior")
            assert torch.equal(out, torch.cat([personalized, net(image)], dim=1))
            net.set_output_mode(mode)
        assert torch.equal(net(image), out)  # fixed noise: reproducible
        torch.jit.save(torch.jit.script(net), str(tmp_path / "m.ts"))
        assert torch.allclose(torch.jit.load(str(tmp_path / "m.ts"))(image), out, atol=1e-6)


def test_q_tau_starts_at_each_raters_corner():
    """q(tau | r) starts at Dir(1, .., 10 at entry r, .., 1) (``initial_tau_peak``): a draw's largest entry
    names its rater; Beta(10, 7) against Beta(1, 16) per entry puts that above 0.99 of the draws (by hand:
    P(Beta(10, 7) < max of 7 Beta(1, 16)) is 0.0008 by sampling). From the embedding's random start no entry
    belongs to a rater: the largest entry is the rater's index in 0.06 of the draws."""
    net = _net()  # 3 raters, tau_dim 8
    alpha = net.tau_concentration().detach()
    expected = torch.ones(3, 8)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 10.0
    torch.testing.assert_close(alpha, expected, atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    draws = net.tau_posterior().sample((2000,))  # (2000, R, D)
    assert (draws.argmax(-1) == torch.arange(3)).float().mean() > 0.99
    torch.manual_seed(0)
    random_start = _net(initial_tau_peak=None).tau_posterior().sample((2000,))
    assert (random_start.argmax(-1) == torch.arange(3)).float().mean() < 0.2
    more_raters = ProSeg.build(num_raters=10, backbone=BackboneConfig(channels=(4, 8), feature_channels=4), tau_dim=4)
    alpha = more_raters.tau_concentration().detach()
    torch.testing.assert_close(alpha.sum(-1), torch.full((10,), 13.0), atol=1e-3, rtol=1e-4)  # 10 + 3 ones
    assert torch.unique(alpha.argmax(-1)[:4]).numel() == 4  # the first tau_dim raters: one corner each
    with pytest.raises(ValueError, match="initial_tau_peak must be above 1"):
        _net(initial_tau_peak=1.0)


def test_q_z_starts_narrow_unless_told_otherwise():
    """The posterior of Z starts at sigma ~0.05 (``initial_z_sigma``); PyTorch's default head gives ~1,
    with which ProSeg returned empty masks on QUBIQ brain growth (see ``ProSeg``'s docstring)."""
    image = torch.randn(2, 1, 16, 16)

    def median_sigma(net: ProSeg) -> float:
        with torch.no_grad():
            _, log_sigma = net._z_params(net.backbone(image))
        return float(torch.exp(log_sigma).median())

    assert median_sigma(_net()) == pytest.approx(0.05, rel=0.5)
    assert median_sigma(_net(initial_z_sigma=None)) > 0.5
    with pytest.raises(ValueError, match="initial_z_sigma must be positive"):
        _net(initial_z_sigma=0.0)


def test_recon_target_standardized_scores_the_decoder_against_the_standardized_image():
    """With the decoder's output at 0, the image term is the mean square of its target: of the image as given,
    or (``recon_target="standardized"``) of the image at zero mean and unit (sample) variance per image,
    (N - 1) / N for N pixels, whatever the image's scale."""
    image = 3.0 + 0.1 * torch.randn(2, 1, 8, 8)  # variance 0.01, far from the standardized 1
    label = (torch.rand(2, 3, 8, 8) > 0.5).float()
    for target, expected in (("image", image.pow(2).mean()), ("standardized", torch.tensor(63 / 64))):
        net = _net(recon_target=target)
        with torch.no_grad():
            net.image_decoder[-1].weight.zero_()
            net.image_decoder[-1].bias.zero_()
        assert torch.allclose(net.training_objective(image, label)["recon"], expected, atol=1e-5), target
    with pytest.raises(ValueError, match="recon_target must be 'image' or 'standardized', got 'z-score'"):
        _net(recon_target="z-score")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_inference_in_chunks_gives_the_logits_of_one_batched_call(spatial_dims):
    """forward runs the predictor in channels-last chunks (the 50-sample speed-up); the samples and
    their logits are those of one batched predictor call, also when the chunks split images unevenly."""
    backbone = BackboneConfig(channels=(4, 8), feature_channels=4, spatial_dims=spatial_dims)
    net = _net(backbone=backbone, output_mode="personalized+prior").eval()
    image = torch.randn((2, 1) + (8,) * spatial_dims)
    with torch.no_grad():
        one_call = net(image)
        assert one_call.shape == (2, 9) + (8,) * spatial_dims
        # 4 maps per chunk: 18 maps (2 images x (3 + 6 outputs)) in chunks of 4, 4, 4, 4, 2
        net.inference_chunk_voxels = 4 * 8 ** spatial_dims
        chunked = net(image)
        net._predict_inference = net._predict  # the reference: every map in one call
        batched = net(image)
    assert not torch.equal(one_call, torch.zeros_like(one_call))
    torch.testing.assert_close(chunked, batched, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_call, batched, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_tau", [True, False])
@pytest.mark.parametrize("spatial", [(1, 1), (2, 3), (3, 7), (9, 4), (2, 3, 5)])
def test_inference_predictor_matches_the_training_predictor(spatial, use_tau):
    """The inference path splits the first convolution into its z and tau parts and computes tau's
    response on a map of at most 3 voxels per side: on every size (also 1, 2 and 3 voxels, where each
    voxel meets the padding) its logits are those of the predictor the training path runs."""
    backbone = BackboneConfig(channels=(4, 8), feature_channels=4, spatial_dims=len(spatial))
    net = _net(backbone=backbone, use_tau=use_tau).eval()
    torch.manual_seed(1)
    z = torch.randn((2, 5, net.z_channels) + spatial)
    tau = torch.distributions.Dirichlet(torch.ones(net.tau_dim)).sample((2, 5))
    with torch.no_grad():
        reference = net._predict(z, tau)
        net.inference_chunk_voxels = 3 * math.prod(spatial)  # chunks of 3 maps: 4 chunks for 10 maps
        fast = net._predict_inference(z, tau)
    assert fast.shape == (2, 5) + spatial
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


def _train_on_synthetic_raters(**kwargs) -> ProSeg:
    torch.manual_seed(0)
    net = ProSeg.build(num_raters=4, backbone=BackboneConfig(channels=(8, 16, 32), feature_channels=8), hidden=16,
                       z_channels=4, num_samples=8, **kwargs)
    fit(net, synthetic_tensors(64, 0, 32), steps=400)
    return net.eval()


@pytest.mark.slow
def test_learns_rater_identity_and_style_on_synthetic_raters():
    """Synthetic raters (conservative, smooth, liberal, noisy) at 32x32, 400 steps each for ProSeg and for
    the same network without tau (rater-blind: every rater gets the same mask); about 80 s on 2 cores.

    Measured (seed 0): the classifier names the rater of 0.99 of tau draws (chance: 0.25); personalized
    Dice per rater [0.81, 0.90, 0.90, 0.77] (mean 0.845); rater-blind [0.43, 0.72, 0.90, 0.73] (mean 0.69: it
    follows the liberal rater A3); prior-mode samples [0.67, 0.81, 0.63, 0.72]. With q(tau | r) from a random
    start (``initial_tau_peak=None``): accuracy 0.74, personalized [0.77, 0.89, 0.90, 0.77]; with sigma of
    q(z | x) starting at 1 (``initial_z_sigma=None``) personalized was [0.63, 0.83, 0.90, 0.75].
    """
    test = synthetic_tensors(32, 1, 32)
    net, blind = _train_on_synthetic_raters(), _train_on_synthetic_raters(use_tau=False, rater_encoders=False)
    with torch.no_grad():
        # the classifier recovers the rater from tau drawn from q(tau | r)
        tau = net.tau_posterior().sample((200,))  # (200, R, D)
        accuracy = (net.identify_raters(tau) == torch.arange(4)).float().mean()
        personalized = dice_per_output(net(test[0]), test[1])  # output r against rater r
        rater_blind = dice_per_output(blind(test[0]), test[1])
        net.set_output_mode("prior")
        prior = torch.stack([dice_per_output(net(test[0])[:, s:s + 1].expand(-1, 4, -1, -1), test[1]) for s in range(8)]).mean(0)
    print("accuracy", float(accuracy), "personalized", personalized.tolist(), "rater-blind", rater_blind.tolist(),
          "prior", prior.tolist())
    assert accuracy > 0.9  # chance: 0.25; 0.74 from a random start of q(tau | r)
    assert personalized.mean() > 0.7, personalized  # it segments: empty masks give 0
    # each rater's style is followed better than a rater-blind model can (it settles on the liberal style),
    # most of all the conservative rater A1's
    assert personalized.mean() > rater_blind.mean() + 0.05, (personalized, rater_blind)
    assert personalized[0] > rater_blind[0] + 0.1, (personalized, rater_blind)
    # personalized outputs follow their rater better than rater-agnostic prior samples do
    assert personalized.mean() > prior.mean() + 0.02, (personalized, prior)


def test_kl_z_warmup_raises_the_kl_weight_linearly_then_holds_it():
    net = _net(kl_z_warmup_steps=4).train()
    image, label = torch.randn(2, 1, 8, 8), (torch.rand(2, 3, 8, 8) > 0.5).float()
    pixels = 64.0
    for step, weight in enumerate([0.25, 0.5, 0.75, 1.0, 1.0], start=1):
        t = net.training_objective(image, label)
        rest = t["recon"] + t["seg"] + (t["classification"] + t["kl_tau"]) / pixels
        assert float(t["loss"]) == pytest.approx(float(rest + weight * t["kl_z"]), rel=1e-5), step
    assert int(net.training_steps) == 5
    net.eval()  # evaluation reports the full ELBO
    t = net.training_objective(image, label)
    assert float(t["loss"]) == pytest.approx(
        float(t["recon"] + t["seg"] + t["kl_z"] + (t["classification"] + t["kl_tau"]) / pixels), rel=1e-5)
