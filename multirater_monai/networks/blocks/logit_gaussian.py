"""A Gaussian over a map of logits, sampled with the reparameterisation trick (TAB, PADL).

TAB and PADL do not draw a latent code and decode it: they predict, per pixel, the mean and the spread
of the mask LOGITS and sample the logits themselves::

    eta = mu + sigma * eps_pixel + sum_k U_k * eps_k

``eps_pixel`` is standard normal per pixel (the diagonal part: independent pixel-wise noise) and
``eps_k`` one standard normal number per factor k for the whole map (the low-rank part: the factors
``U_k`` are maps that move together, a correlated change of the mask). The covariance over the
pixels is ``diag(sigma^2) + U^T U`` (``torch.distributions.LowRankMultivariateNormal`` with
``cov_factor = U^T``); PADL has no factors (diagonal only), TAB has rank about R + 1. The mean,
sigma and the factors are differentiable outputs of the network, so the gradient of a loss on
``eta`` reaches all three.

Fixed inference noise: the pixel noise is a buffer of ``(S, tile, tile)`` normals tiled over the image
(an image up to ``tile`` pixels a side sees independent noise in every pixel; larger ones repeat it
with period ``tile``), so that a TorchScript export reproduces the samples at any input size.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["sample_logit_gaussian", "tiled_pixel_noise", "logit_scale"]


def logit_scale(raw: torch.Tensor) -> torch.Tensor:
    """sigma > 0 from an unconstrained network output (softplus: no overflow, unlike exp)."""
    return F.softplus(raw) + 1e-4


def tiled_pixel_noise(noise: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(S, tile, tile)`` noise -> ``(S, height, width)``: repeated over the image, then cropped."""
    tile_h, tile_w = noise.shape[-2], noise.shape[-1]
    reps_h = (height + tile_h - 1) // tile_h
    reps_w = (width + tile_w - 1) // tile_w
    return noise.repeat(1, reps_h, reps_w)[:, :height, :width]


def sample_logit_gaussian(
    mean: torch.Tensor,
    sigma: torch.Tensor,
    pixel_noise: torch.Tensor,
    factors: torch.Tensor | None = None,
    factor_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reparameterised logit samples ``mean + sigma * pixel_noise + sum_k factors_k * factor_noise_k``.

    Args:
        mean, sigma: ``(..., H, W)``.
        pixel_noise: broadcastable to ``mean`` (e.g. ``(..., S, H, W)`` against ``(..., 1, H, W)``).
        factors: ``(..., K, H, W)`` low-rank factor maps (None: diagonal Gaussian).
        factor_noise: ``(..., K)`` broadcastable against ``factors``' leading axes, one normal per factor.
    """
    sample = mean + sigma * pixel_noise
    if factors is not None and factor_noise is not None:
        sample = sample + (factors * factor_noise[..., None, None]).sum(-3)
    return sample
