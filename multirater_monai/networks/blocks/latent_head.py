"""Latent-combining head ("fcomb" of the Probabilistic U-Net): features + tiled z -> logits.

For each latent code z the head tiles z over the feature map, concatenates it to the features
and applies ``num_convs`` 1x1 convolutions (ReLU between). All S codes of an image go through ONE
batched call, and the feature map is touched once:

* a 1x1 convolution on ``[features, tile(z)]`` equals ``W_f @ features + W_z @ z + b``; the first
  term is computed once per image, the second once per code (a D-vector), and they are added by
  broadcasting to ``(B, S, *spatial, hidden)``;
* the remaining 1x1 convolutions act on the channel (last) axis of that tensor as linear layers.

So the parameters are ``nn.Linear`` layers (a 1x1 convolution is a linear map over channels)
and the head costs ``O(B * S * pixels * hidden^2)``, never a backbone pass per sample.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LatentCombiningHead"]


class LatentCombiningHead(nn.Module):
    """``head(features (B, F, *sp), z (B, S, D)) -> logits (B, S, *sp)``.

    Args:
        feature_channels: F, channels of the backbone feature map.
        latent_dim: D.
        out_channels: output channels; 1 (default) gives ``(B, S, *sp)``, more give
            ``(B, S, out_channels, *sp)``.
        hidden: channels of the hidden 1x1 convolutions.
        num_convs: number of 1x1 convolutions (>= 2; Kohl et al. use 3).

    ``z`` may also be ``(B, D)`` (one code per image): the output then has ``S = 1``.
    """

    def __init__(
        self, feature_channels: int, latent_dim: int, out_channels: int = 1, hidden: int = 16, num_convs: int = 3
    ) -> None:
        super().__init__()
        if num_convs < 2:
            raise ValueError(f"num_convs must be at least 2, got {num_convs}.")
        self.feature_channels = feature_channels
        self.latent_dim = latent_dim
        self.out_channels = out_channels
        self.combine = nn.Linear(feature_channels + latent_dim, hidden)
        decoder = [nn.Linear(hidden, hidden) for _ in range(num_convs - 2)] + [nn.Linear(hidden, out_channels)]
        self.decoder = nn.ModuleList(decoder)

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z.unsqueeze(1)
        n_spatial = features.dim() - 2
        w = self.combine.weight
        # once per image: (B, *sp, hidden), channels last so the linear layers run as one GEMM
        h_features = F.linear(features.movedim(1, -1), w[:, : self.feature_channels])
        # once per code: (B, S, hidden) -> (B, S, 1, ..., 1, hidden)
        h_codes = F.linear(z, w[:, self.feature_channels :], self.combine.bias)
        for _ in range(n_spatial):
            h_codes = h_codes.unsqueeze(2)
        h = h_features.unsqueeze(1) + h_codes  # (B, S, *sp, hidden)
        # The ReLUs run in place: the (B, S, *sp, hidden) tensors are the cost here (memory traffic, not
        # arithmetic; benchmarks/bench_dpersona.py, paper configuration, 50 samples for one image:
        # 214 -> 180 ms on 2 cores), and autograd allows it (neither the addition nor a linear layer
        # needs its own output for the backward pass).
        for layer in self.decoder:
            h = layer(torch.relu_(h))
        h = h.movedim(-1, 2)  # (B, S, out, *sp)
        if self.out_channels == 1:
            h = h.squeeze(2)
        return h
