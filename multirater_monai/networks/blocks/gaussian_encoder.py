"""Axis-aligned Gaussian latent encoder (prior / posterior net of the Probabilistic U-Net).

A convolutional encoder, global average pooling and a 1x1 convolution (a linear layer on the
pooled vector) give ``mu`` and ``log_sigma`` of a diagonal Gaussian over a ``latent_dim`` code.

* prior net ``p(z | X)``: ``in_channels`` = image channels;
* posterior net ``q(z | X, A_set)``: ``in_channels`` = image channels + number of raters; its input
  is the image concatenated with the whole rater stack along channels (D-Persona eq. 1). A missing
  rater enters as an all-zero channel (the data contract already zeroes it; the networks multiply
  by ``rater_mask`` again so that nothing else can leak in).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers import Pool
from torch import nn
from torch.distributions import Independent, Normal

__all__ = ["AxisAlignedGaussianEncoder", "gaussian_kl"]


def gaussian_kl(mu_q: torch.Tensor, log_sigma_q: torch.Tensor, mu_p: torch.Tensor, log_sigma_p: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu_q, sigma_q) || N(mu_p, sigma_p))`` of diagonal Gaussians, summed over the last axis.

    The closed form of ``torch.distributions.kl_divergence`` written in the log-sigmas,
    ``log sp - log sq + (sq^2 + (mq - mp)^2) / (2 sp^2) - 1/2``, with the variance ratio as
    ``exp(2 (log sq - log sp))``: torch's form squares ``sq / sp`` and takes its log, which underflows
    to ``log 0`` once the posterior's sigma is ~1e-17 (a Prob U-Net trained on lidc-phantom, seed 2,
    reached it at step 28 and every weight became NaN). Same value wherever both are finite.
    """
    log_ratio = log_sigma_q - log_sigma_p
    return (-log_ratio + 0.5 * torch.exp(2.0 * log_ratio) + 0.5 * (mu_q - mu_p).pow(2) * torch.exp(-2.0 * log_sigma_p)
            - 0.5).sum(-1)


class AxisAlignedGaussianEncoder(nn.Module):
    """Image (+ rater stack) -> diagonal Gaussian ``Independent(Normal(mu, sigma), 1)``.

    Args:
        in_channels: input channels (image, or image + raters for the posterior).
        latent_dim: dimension D of the latent code (paper: 6).
        channels: channels of the encoder levels; levels after the first start with a 2x average
            pooling (as in Kohl et al.).
        spatial_dims: 2 or 3.
        convs_per_block: 3x3 convolutions (+ ReLU) per level.

    ``forward(x)`` returns the distribution (Python only); ``encode(x)`` returns
    ``(mu, log_sigma)``, each ``(B, D)``, and is what TorchScript-exported inference uses.
    """

    def __init__(
        self,
        in_channels: int,
        latent_dim: int = 6,
        channels: Sequence[int] = (32, 64, 128, 192),
        spatial_dims: int = 2,
        convs_per_block: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.latent_dim = latent_dim
        layers: list[nn.Module] = []
        c_in = in_channels
        for level, c_out in enumerate(channels):
            if level > 0:
                layers.append(Pool[Pool.AVG, spatial_dims](kernel_size=2, stride=2, ceil_mode=True))
            for _ in range(convs_per_block):
                layers.append(Convolution(spatial_dims, c_in, c_out, kernel_size=3, act="RELU", norm=None))
                c_in = c_out
        self.encoder = nn.Sequential(*layers)
        # the "1x1 convolution" on the pooled (B, C, 1, 1) vector, written as a linear layer
        self.to_params = nn.Linear(c_in, 2 * latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_sigma)``, each ``(B, latent_dim)``."""
        h = self.encoder(x).flatten(2).mean(-1)  # global average pool
        params = self.to_params(h)
        return params[:, : self.latent_dim], params[:, self.latent_dim :]

    @torch.jit.unused
    def forward(self, x: torch.Tensor) -> Independent:
        mu, log_sigma = self.encode(x)
        return distribution(mu, log_sigma)


@torch.jit.unused
def distribution(mu: torch.Tensor, log_sigma: torch.Tensor) -> Independent:
    """``Independent(Normal(mu, exp(log_sigma)), 1)``, the encoder's distribution from its parameters."""
    return Independent(Normal(loc=mu, scale=torch.exp(log_sigma)), 1)
