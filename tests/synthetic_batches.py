"""Small in-memory synthetic batches and a Dice per rater, for the network learning tests."""

from __future__ import annotations

import numpy as np
import torch

from multirater_monai.data import make_synthetic_sample


def synthetic_tensors(n: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, rater stack, rater mask) of ``n`` seeded synthetic samples."""
    samples = [make_synthetic_sample(np.random.default_rng([seed, i]), size=size) for i in range(n)]
    return tuple(torch.from_numpy(np.stack([s[k] for s in samples])) for k in ("image", "label", "rater_mask"))


def dice_per_output(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Dice of output r (logits > 0) with rater r, averaged over the batch: (R,)."""
    pred = (logits > 0).float()
    inter = (pred * label).sum((-1, -2))
    return (2 * inter / (pred.sum((-1, -2)) + label.sum((-1, -2))).clamp(min=1e-8)).mean(0)
