"""Per-rater projection heads of D-Persona Stage II (eq. 7): features -> one query code per rater.

Each rater i has its own small convolutional head F_i^proj on the (frozen) backbone features,
followed by global average pooling, giving ``z_i^exp`` in R^D. The paper gives only the size of a
head (22.03 K parameters, Sec. 4.2); the published implementation reaches it with three levels of
two 3x3 convolutions of widths 32, 16 and D = 6 on 16 feature channels (4640 + 9248 + 4624 + 2320 +
870 + 330 = 22032 parameters), which is the default here. Two choices of ours, where the paper is
silent: each level starts with a strided convolution instead of full-resolution convolutions
followed by pooling (the same parameters, a quarter of the work per level: the output is pooled
anyway), and the last convolution has no ReLU, so a query's entries can take either sign in the
attention ``q^T z`` of eq. 8 (a ReLU there confines the queries to the positive orthant and a head
whose last layer dies gives the uniform average of the bank).

The R heads are independent but are evaluated in one call: the first convolution of all heads is
one convolution to ``R * width`` channels (it reads the shared features), the following ones are
grouped convolutions with ``groups=R``, so channel block i only ever sees block i (head i's
parameters affect only rater i's query).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

__all__ = ["RaterProjectionHeads"]


class RaterProjectionHeads(nn.Module):
    """``(B, F, *sp) -> (B, R, D)`` queries, one independent head per rater.

    Args:
        feature_channels: F.
        latent_dim: D, the width of the last level.
        num_raters: R.
        channels: widths of the levels before the last (default (32, 16): 22.03 K parameters per head
            with F = 16 and D = 6, as the paper states).
        strides: stride of the first convolution of each level (``len(channels) + 1`` values).
        convs_per_level: 3x3 convolutions per level.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        feature_channels: int,
        latent_dim: int,
        num_raters: int,
        channels: Sequence[int] = (32, 16),
        strides: Sequence[int] = (2, 2, 1),
        convs_per_level: int = 2,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        widths = [int(c) for c in channels] + [int(latent_dim)]
        if len(strides) != len(widths):
            raise ValueError(f"strides needs one value per level ({len(widths)}), got {list(strides)}.")
        if convs_per_level < 1:
            raise ValueError("convs_per_level must be at least 1.")
        conv = Conv[Conv.CONV, spatial_dims]
        r = num_raters
        self.num_raters = num_raters
        self.latent_dim = latent_dim
        layers: list[nn.Module] = []
        in_ch, groups = feature_channels, 1  # the first convolution reads the shared features
        for width, stride in zip(widths, strides):
            for j in range(convs_per_level):
                layers.append(conv(in_ch, r * width, kernel_size=3, stride=stride if j == 0 else 1, padding=1,
                                   groups=groups))
                layers.append(nn.ReLU())
                in_ch, groups = r * width, r
        self.net = nn.Sequential(*layers[:-1])  # no ReLU after the last convolution: signed queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        q = self.net(features).flatten(2).mean(-1)  # global average pooling: (B, R * D)
        return q.view(q.shape[0], self.num_raters, self.latent_dim)
