"""Fixed sampling noise for reproducible inference of the latent-variable methods.

Prob U-Net, D-Persona and ProSeg keep the noise of their inference samples in buffers drawn from a
seed, so that inference (and a TorchScript export) gives the same samples every time; ``None`` as
seed means fresh noise at every call. ``KEEP`` marks "leave this setting as it is" where ``None``
is itself a meaningful value (fresh noise).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["KEEP", "fixed_noise"]

KEEP: Any = object()


def fixed_noise(rows: int, latent_dim: int, seed: int | None, like: torch.Tensor | None = None) -> torch.Tensor:
    """``(rows, latent_dim)`` standard normal noise from ``seed`` (None: unseeded), on ``like``'s device/dtype."""
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    eps = torch.randn(rows, latent_dim, generator=generator)
    return eps if like is None else eps.to(like.device, like.dtype)
