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

The codes go through the decoder in chunks whose ``(B, chunk, *spatial, hidden)`` tensors stay under
``chunk_bytes`` (4 MiB; at least one code per chunk). The work is memory traffic, not arithmetic, and
a tensor larger than glibc's largest mmap threshold (32 MiB) is a fresh mapping every time, paid in
page faults: in D-Persona's training step (paper configuration: 12 images x 11 codes x 128 x 128 x
16 channels, 138 MB per tensor) the head's forward + backward took 767 ms in one piece and 336 ms in
chunks of one code; for one image's 50 samples, 2-4 MiB chunks took 28-31 ms against 46 ms at 16 MiB
and 80 ms at 64 MiB (2 CPU cores; benchmarks/bench_dpersona.py measures the head inside the step).
The logits are the same.
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
        chunk_bytes: largest hidden tensor of one chunk of codes (see the module docstring).

    ``z`` may also be ``(B, D)`` (one code per image): the output then has ``S = 1``.
    """

    def __init__(
        self, feature_channels: int, latent_dim: int, out_channels: int = 1, hidden: int = 16, num_convs: int = 3,
        chunk_bytes: int = 4 * 2**20,
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
        self.hidden = int(hidden)
        self.chunk_bytes = int(chunk_bytes)

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
        per_code = h_features.numel() * h_features.element_size()  # bytes of one code's hidden tensor
        chunk = max(1, self.chunk_bytes // max(per_code, 1))
        outputs: list[torch.Tensor] = []
        for start in range(0, h_codes.shape[1], chunk):
            h = h_features.unsqueeze(1) + h_codes[:, start:start + chunk]  # (B, chunk, *sp, hidden)
            # The ReLUs run in place: the (B, chunk, *sp, hidden) tensors are the cost here (memory traffic,
            # not arithmetic), and autograd allows it (neither the addition nor a linear layer needs its
            # own output for the backward pass).
            for layer in self.decoder:
                h = layer(torch.relu_(h))
            outputs.append(h.movedim(-1, 2))  # (B, chunk, out, *sp)
        h = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        if self.out_channels == 1:
            h = h.squeeze(2)
        return h
