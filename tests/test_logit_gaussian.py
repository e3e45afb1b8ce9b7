"""The logit-Gaussian block of TAB and PADL: samples by hand, the low-rank covariance, the noise tiling."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import LowRankMultivariateNormal

from multirater_monai.networks.blocks import logit_scale, sample_logit_gaussian, tiled_pixel_noise


def test_sample_by_hand():
    mean = torch.tensor([[1.0, -2.0]])  # one row of two pixels
    sigma = torch.tensor([[2.0, 0.5]])
    pixel_noise = torch.tensor([[0.5, -1.0]])
    factors = torch.tensor([[[3.0, 0.0], [1.0, -1.0]]])  # rank 2: (1, K=2, 1, 2) after the row axis
    factor_noise = torch.tensor([[2.0, -1.0]])
    # pixel 0: 1 + 2 * 0.5 + 3 * 2 + 1 * (-1) = 7;  pixel 1: -2 + 0.5 * (-1) + 0 * 2 + (-1) * (-1) = -1.5
    out = sample_logit_gaussian(mean[:, None], sigma[:, None], pixel_noise[:, None], factors[:, :, None], factor_noise)
    assert out.tolist() == [[[7.0, -1.5]]]
    # without factors: the diagonal Gaussian only
    assert sample_logit_gaussian(mean, sigma, pixel_noise).tolist() == [[2.0, -2.5]]


def test_samples_have_the_low_rank_covariance():
    """Three pixels, rank 2: the empirical covariance of 40000 draws is diag(sigma^2) + U^T U, which is
    LowRankMultivariateNormal's covariance with cov_factor U^T."""
    torch.manual_seed(0)
    mean = torch.tensor([0.5, -1.0, 2.0]).reshape(1, 3)
    sigma = torch.tensor([0.3, 1.0, 0.5]).reshape(1, 3)
    factors = torch.tensor([[1.0, 0.5, 0.0], [0.0, -1.0, 2.0]]).reshape(2, 1, 3)
    n = 40000
    draws = sample_logit_gaussian(mean, sigma, torch.randn(n, 1, 3), factors, torch.randn(n, 2))[:, 0]
    # by hand: diag(0.09, 1, 0.25) + U^T U, U^T U = [[1, .5, 0], [.5, 1.25, -2], [0, -2, 4]]
    by_hand = torch.tensor([[1.09, 0.5, 0.0], [0.5, 2.25, -2.0], [0.0, -2.0, 4.25]])
    reference = LowRankMultivariateNormal(mean[0], factors[:, 0].T, sigma[0] ** 2).covariance_matrix
    torch.testing.assert_close(reference, by_hand)
    torch.testing.assert_close(torch.cov(draws.T), by_hand, atol=0.06, rtol=0.03)
    torch.testing.assert_close(draws.mean(0), mean[0], atol=0.03, rtol=0.0)


def test_gradient_reaches_mean_sigma_and_factors():
    mean, raw, factors = torch.zeros(1, 4, requires_grad=True), torch.zeros(1, 4, requires_grad=True), \
        torch.ones(1, 1, 4, requires_grad=True)
    sample_logit_gaussian(mean, logit_scale(raw), torch.ones(1, 4), factors, torch.ones(1, 1)).sum().backward()
    assert mean.grad.tolist() == [[1.0] * 4]
    torch.testing.assert_close(raw.grad, torch.full((1, 4), 0.5))  # d softplus / dx at 0 = sigmoid(0)
    assert factors.grad.tolist() == [[[1.0] * 4]]


def test_scale_is_a_shifted_softplus():
    assert logit_scale(torch.tensor(0.0)).item() == pytest.approx(math.log(2) + 1e-4)
    assert logit_scale(torch.tensor(-100.0)).item() == pytest.approx(1e-4)


def test_pixel_noise_tiles_and_crops():
    tile = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert tiled_pixel_noise(tile, 3, 5).tolist() == [[[1, 2, 1, 2, 1], [3, 4, 3, 4, 3], [1, 2, 1, 2, 1]]]
    assert tiled_pixel_noise(tile, 1, 1).tolist() == [[[1.0]]]
