"""Probabilistic U-Net: training objective, random present rater, batched sampling, export."""

from __future__ import annotations

import math

import pytest
import torch

from multirater_monai.data import MultiRaterDataError
from multirater_monai.networks import ProbabilisticUNet, random_present_rater, BackboneConfig

TINY = dict(backbone=BackboneConfig(channels=(4, 8, 16), feature_channels=4), prior_channels=(4, 8), head_hidden=4)


def _net(**kwargs):
    torch.manual_seed(0)
    return ProbabilisticUNet.build(num_raters=3, **TINY, **kwargs)


def _batch(b=2, size=32):
    torch.manual_seed(1)
    image = torch.randn(b, 1, size, size)
    label = (torch.rand(b, 3, size, size) > 0.5).float()
    return image, label


def test_training_objective_terms_and_gradients():
    net = _net(l2_weight=1e-3)
    image, label = _batch()
    terms = net.training_objective(image, label, torch.tensor([[True, False, True], [True, True, True]]))
    assert set(terms) == {"loss", "seg", "kl", "l2"}
    expected = terms["seg"] + 1.0 * terms["kl"] + 1e-3 * terms["l2"]
    assert torch.allclose(terms["loss"], expected)
    assert float(terms["kl"]) >= 0 and float(terms["l2"]) > 0
    # Kohl et al.'s reconstruction term: BCE summed over the 32 x 32 pixels, so at initialisation (logits
    # near 0, BCE near ln 2 per pixel) about 1024 ln 2 = 710 nats per image, far above a Dice's 1
    assert 600 < float(terms["seg"]) < 800
    terms["loss"].backward()
    for name in ("backbone", "prior", "posterior", "head"):
        grads = [p.grad for p in getattr(net, name).parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name


def test_reconstruction_term_is_the_pixel_sum_of_the_cross_entropy():
    from multirater_monai.networks.nets.prob_unet import pixel_sum_bce

    logits = torch.zeros(2, 1, 2, 2)  # p = 0.5 everywhere: ln 2 per pixel, 4 pixels per image
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    assert float(pixel_sum_bce(logits, target)) == pytest.approx(4 * math.log(2))
    logits[1] = 10.0  # the second image now right with p = 1 / (1 + e^-10): ln(1 + e^-10) per pixel
    expected = (4 * math.log(2) + 4 * math.log1p(math.exp(-10.0))) / 2
    assert float(pixel_sum_bce(logits, target)) == pytest.approx(expected)


def test_random_rater_only_picks_present_raters():
    # rater r's mask is the constant r + 1, so the chosen value tells which rater was picked
    label = torch.arange(1.0, 5.0).view(1, 4, 1, 1).expand(400, 4, 2, 2).clone()
    mask = torch.tensor([False, True, False, True]).expand(400, 4).clone()
    mask[:100] = torch.tensor([True, False, False, False])  # only rater 1 present
    picked = random_present_rater(label, mask, generator=torch.Generator().manual_seed(0))
    assert picked.shape == (400, 1, 2, 2)
    assert (picked[:100] == 1).all()
    values = set(picked[100:, 0, 0, 0].tolist())
    assert values == {2.0, 4.0}  # both present raters are drawn, never a missing one


def test_posterior_sees_exactly_the_mask_it_reconstructs():
    """Kohl et al.: q(z | X, Y) is conditioned on the segmentation Y its sample must reconstruct. (Before,
    the posterior saw the whole rater stack while the loss scored one random rater: it could not tell
    which rater to explain, and its samples collapsed onto each other.)"""
    net = _net()
    assert net.posterior.in_channels == 1 + 1  # the image and one mask, whatever the number of raters
    image, label = _batch()
    label[:, 1] = 1.0  # a missing rater's channel holds garbage: it must never be seen or reconstructed
    seen, targets = [], []
    net.posterior.encoder.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    loss = net._losses["seg"]
    net._losses["seg"] = lambda logits, target: targets.append(target.clone()) or loss(logits, target)
    for _ in range(5):
        net.training_objective(image, label, torch.tensor([[True, False, True], [True, False, True]]))
    for posterior_input, target in zip(seen, targets):
        assert torch.equal(posterior_input[:, 1:], target)  # the same mask, image by image
        for b in range(2):
            assert any(torch.equal(target[b, 0], label[b, r]) for r in (0, 2))  # a present rater's


def test_dpersona_keeps_the_rater_stack_posterior_with_missing_raters_zeroed():
    from multirater_monai.networks import DPersona

    torch.manual_seed(0)
    net = DPersona.build(num_raters=3, num_bound_samples=2, **TINY)
    image, label = _batch()
    seen = []
    net.posterior.encoder.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    label[:, 1] = 1.0  # garbage in a channel whose rater is missing
    net.training_objective(image, label, torch.tensor([[True, False, True], [True, False, True]]))
    assert seen[0].shape[1] == 1 + 3 and (seen[0][:, 1 + 1] == 0).all()  # D-Persona eq. 1: X and A_set


def test_bad_batches_raise_one_clear_error():
    net = _net()
    image, label = _batch()
    with pytest.raises(MultiRaterDataError, match="num_raters=3"):
        net.training_objective(image, label[:, :2])
    with pytest.raises(MultiRaterDataError, match="no annotating rater"):
        net.training_objective(image, label, torch.tensor([[False] * 3, [True] * 3]))


def test_sampling_runs_the_backbone_once_and_the_head_once():
    net = _net(num_samples=50).eval()
    calls = {"backbone": 0, "head": 0}
    net.backbone.register_forward_hook(lambda *a: calls.__setitem__("backbone", calls["backbone"] + 1))
    net.head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    with torch.no_grad():
        out = net(torch.randn(3, 1, 32, 32))
    assert out.shape == (3, 50, 32, 32)
    assert calls == {"backbone": 1, "head": 1}


def test_seeded_sampling_is_reproducible_and_settable():
    image = _batch()[0]
    a, b = _net(sample_seed=7).eval(), _net(sample_seed=7).eval()
    with torch.no_grad():
        out_a, out_b = a(image), b(image)
        assert torch.equal(out_a, out_b) and torch.equal(a(image), out_a)
        # samples differ from each other (the prior has non-zero sigma)
        assert not torch.allclose(out_a[:, 0], out_a[:, 1])
        a.set_sampling(num_samples=5)
        assert a.num_samples == 5 and a(image).shape[1] == 5
        a.set_sampling(sample_seed=None)  # fresh noise at every call
        assert not torch.equal(a(image), a(image))
    assert "sample_noise" not in a.state_dict()  # checkpoints do not depend on S


@pytest.mark.parametrize("mode", ["script", "trace"])
def test_torchscript_export_roundtrip(mode, tmp_path):
    net = _net(num_samples=6).eval()
    image = _batch()[0]
    exported = torch.jit.script(net) if mode == "script" else torch.jit.trace(net, image)
    torch.jit.save(exported, tmp_path / "net.ts")
    loaded = torch.jit.load(tmp_path / "net.ts")
    with torch.no_grad():
        assert torch.allclose(loaded(image), net(image), atol=1e-6)


def test_gaussian_kl_is_torch_closed_form_and_stays_finite_for_a_near_deterministic_posterior():
    from torch.distributions import Independent, Normal, kl_divergence

    from multirater_monai.networks.blocks.gaussian_encoder import gaussian_kl

    g = torch.Generator().manual_seed(0)
    mu_q, ls_q, mu_p, ls_p = (torch.randn(5, 6, generator=g) for _ in range(4))
    reference = kl_divergence(Independent(Normal(mu_q, ls_q.exp()), 1), Independent(Normal(mu_p, ls_p.exp()), 1))
    assert torch.allclose(gaussian_kl(mu_q, ls_q, mu_p, ls_p), reference, atol=1e-5)
    # by hand: KL(N(1, 1) || N(0, e)) = log(e / 1) + (1 + 1^2) / (2 e^2) - 1/2 = 1/2 + e^-2
    one = gaussian_kl(torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1))
    assert one.item() == pytest.approx(0.5 + math.exp(-2.0), abs=1e-6)
    # the state a Prob U-Net reached on lidc-phantom (seed 2, step 28): posterior sigma ~ e^-40, prior sigma ~ e^9
    ls_q = torch.full((2, 6), -40.0, requires_grad=True)
    ls_p = torch.full((2, 6), 9.0, requires_grad=True)
    kl = gaussian_kl(torch.zeros(2, 6), ls_q, torch.zeros(2, 6), ls_p).mean()
    kl.backward()
    assert torch.isfinite(kl) and torch.isfinite(ls_q.grad).all() and torch.isfinite(ls_p.grad).all()
    ls_q2, ls_p2 = ls_q.detach().clone().requires_grad_(), ls_p.detach().clone().requires_grad_()
    torch_kl = kl_divergence(Normal(torch.zeros(2, 6), ls_q2.exp()), Normal(torch.zeros(2, 6), ls_p2.exp())).sum(-1).mean()
    torch_kl.backward()
    assert not torch.isfinite(ls_q2.grad).all(), "torch's form underflows here (why gaussian_kl exists)"
