"""Backbone, Gaussian encoder, latent-combining head and rater projection heads."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, kl_divergence
from torch.nn import functional as F

from multirater_monai.networks import (
    AxisAlignedGaussianEncoder,
    LatentCombiningHead,
    RaterProjectionHeads,
    UNetFeatureBackbone,
)


def test_small_backbone_shape_and_gradient():
    net = UNetFeatureBackbone(in_channels=2, feature_channels=5, encoder="small", channels=(4, 8, 16))
    x = torch.randn(2, 2, 32, 32, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 5, 32, 32)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_resnet34_backbone_is_the_paper_size():
    net = UNetFeatureBackbone(in_channels=1, feature_channels=16, encoder="resnet34")
    # MONAI FlexibleUNet(resnet34, out_channels=16): 23,649,648 parameters (paper: ResNet34 U-Net)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(23.65e6, rel=1e-3)
    assert net.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 16, 64, 64)


def test_backbone_rejects_unknown_encoder():
    with pytest.raises(ValueError, match="resnet34"):
        UNetFeatureBackbone(encoder="resnet35")


def test_gaussian_encoder_distribution_and_analytic_kl():
    torch.manual_seed(0)
    prior = AxisAlignedGaussianEncoder(1, latent_dim=3, channels=(4, 8), convs_per_block=1)
    posterior = AxisAlignedGaussianEncoder(1 + 2, latent_dim=3, channels=(4, 8), convs_per_block=1)
    x = torch.randn(2, 1, 16, 16)
    p = prior(x)
    q = posterior(torch.cat([x, torch.rand(2, 2, 16, 16)], 1))
    assert isinstance(p, Independent) and p.event_shape == (3,) and p.batch_shape == (2,)
    mu, log_sigma = prior.encode(x)
    assert torch.allclose(p.mean, mu) and torch.allclose(p.stddev, log_sigma.exp())
    kl = kl_divergence(q, p)  # (B,)
    # closed form of KL(q || p) for diagonal Gaussians, summed over the latent dimensions
    mq, sq, mp, sp = q.mean, q.stddev, p.mean, p.stddev
    by_hand = (torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum(-1)
    assert torch.allclose(kl, by_hand, atol=1e-6)
    # Monte Carlo: E_q[log q(z) - log p(z)] over 200k samples; standard error << 0.02 here
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(mc, kl, atol=0.02)


def test_gaussian_encoder_gradient_reaches_all_parameters():
    enc = AxisAlignedGaussianEncoder(1, latent_dim=2, channels=(4, 8), convs_per_block=2)
    dist = enc(torch.randn(3, 1, 16, 16))
    dist.rsample().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def _head_reference(head: LatentCombiningHead, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The textbook head: per sample, concatenate tiled z and apply 1x1 convolutions."""
    outs = []
    for s in range(z.shape[1]):
        tiled = z[:, s, :, None, None].expand(-1, -1, *features.shape[2:])
        h = torch.cat([features, tiled], 1)
        layers = [head.combine, *head.decoder]
        for i, layer in enumerate(layers):
            if i > 0:
                h = torch.relu(h)
            h = F.conv2d(h, layer.weight[:, :, None, None], layer.bias)
        outs.append(h[:, 0])
    return torch.stack(outs, 1)


def test_latent_head_batched_equals_per_sample_concatenation():
    torch.manual_seed(0)
    head = LatentCombiningHead(feature_channels=5, latent_dim=3, hidden=7, num_convs=3)
    features, z = torch.randn(2, 5, 8, 9), torch.randn(2, 4, 3)
    out = head(features, z)
    assert out.shape == (2, 4, 8, 9)
    assert torch.allclose(out, _head_reference(head, features, z), atol=1e-5)
    assert head(features, z[:, 0]).shape == (2, 1, 8, 9)  # (B, D): one code per image


def test_latent_head_gradients_and_multichannel_output():
    head = LatentCombiningHead(4, 2, out_channels=3, hidden=6, num_convs=2)
    features = torch.randn(2, 4, 6, 6, requires_grad=True)
    z = torch.randn(2, 5, 2, requires_grad=True)
    out = head(features, z)
    assert out.shape == (2, 5, 3, 6, 6)
    out.sum().backward()
    assert features.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())


def test_latent_head_in_chunks_gives_the_same_logits_and_gradients():
    torch.manual_seed(0)
    head = LatentCombiningHead(4, 2, out_channels=1, hidden=6, num_convs=3)
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    z = torch.randn(2, 5, 2, requires_grad=True)
    whole = head(features, z)  # 16 MiB default: one chunk here
    whole.square().sum().backward()
    grads = features.grad.clone(), z.grad.clone(), head.combine.weight.grad.clone()
    for tensor in (features, z, head.combine.weight):
        tensor.grad = None
    head.chunk_bytes = 2 * 8 * 8 * 6 * 4 * 2  # two codes per chunk: chunks of 2, 2 and 1
    chunked = head(features, z)
    chunked.square().sum().backward()
    assert torch.allclose(chunked, whole, atol=1e-6)
    for got, expected in zip((features.grad, z.grad, head.combine.weight.grad), grads):
        assert torch.allclose(got, expected, atol=1e-5)


def test_rater_projection_heads_shape_and_independence():
    torch.manual_seed(0)
    heads = RaterProjectionHeads(feature_channels=4, latent_dim=3, num_raters=3, channels=(5,), strides=(2, 1))
    features = torch.randn(2, 4, 16, 16)
    q = heads(features)
    assert q.shape == (2, 3, 3)
    # changing head 1's weights (its block of the grouped conv) changes only rater 1's query
    with torch.no_grad():
        heads.net[2].weight[5:10] += 1.0  # output channels 5..9 of the second (grouped) conv = head 1
    q2 = heads(features)
    assert torch.equal(q2[:, 0], q[:, 0]) and torch.equal(q2[:, 2], q[:, 2])
    assert not torch.allclose(q2[:, 1], q[:, 1])
    # per head: 4*5*9+5 + 5*5*9+5 + 5*3*9+3 + 3*3*9+3 = 185 + 230 + 138 + 84 = 637 parameters
    assert sum(p.numel() for p in heads.parameters()) == 3 * 637
    assert (q < 0).any(), "the last convolution has no ReLU: queries take both signs"
    assert math.isfinite(float(q2.detach().sum()))


def test_rater_projection_head_has_the_papers_size():
    # D-Persona Sec. 4.2: 22.03 K parameters per projection head (16 feature channels, D = 6)
    heads = RaterProjectionHeads(feature_channels=16, latent_dim=6, num_raters=4)
    assert sum(p.numel() for p in heads.parameters()) == 4 * 22032
    assert heads(torch.randn(1, 16, 32, 32)).shape == (1, 4, 6)
