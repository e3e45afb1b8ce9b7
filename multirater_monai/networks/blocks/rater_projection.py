"""Per-rater projection heads of D-Persona Stage II (eq. 7): features -> one query code per rater.

Each rater i has its own small convolutional head F_i^proj on the (frozen) backbone features,
followed by global average pooling, giving ``z_i^exp`` in R^D. The R heads are independent but are
evaluated in one call: the first convolution of all heads is one convolution to ``R * hidden``
channels (it reads the shared features), the following ones are grouped convolutions with
``groups=R``, so channel block i only ever sees block i (head i's parameters affect only
rater i's query). Strided convolutions keep the heads cheap: the output is pooled anyway.
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
        latent_dim: D.
        num_raters: R.
        hidden: channels of each head (hidden=32, F=16, D=6 gives 14.1 K parameters per head;
            the paper reports 22.03 K, hidden=40 gives 20.5 K).
        strides: strides of the two 3x3 convolutions of each head.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        feature_channels: int,
        latent_dim: int,
        num_raters: int,
        hidden: int = 32,
        strides: Sequence[int] = (2, 2),
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        r, h = num_raters, hidden
        self.num_raters = num_raters
        self.latent_dim = latent_dim
        self.net = nn.Sequential(
            conv(feature_channels, r * h, kernel_size=3, stride=strides[0], padding=1),
            nn.ReLU(),
            conv(r * h, r * h, kernel_size=3, stride=strides[1], padding=1, groups=r),
            nn.ReLU(),
            conv(r * h, r * latent_dim, kernel_size=1, groups=r),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        q = self.net(features).flatten(2).mean(-1)  # global average pooling: (B, R * D)
        return q.view(q.shape[0], self.num_raters, self.latent_dim)
