"""Small in-memory synthetic batches, a training loop and a Dice per rater, for the network learning tests."""

from __future__ import annotations

import numpy as np
import torch

from multirater_monai.data import make_synthetic_sample


def synthetic_tensors(n: int, seed: int, size: int, num_structures: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, rater stack, rater mask) of ``n`` seeded synthetic samples."""
    samples = [make_synthetic_sample(np.random.default_rng([seed, i]), size=size, num_structures=num_structures)
               for i in range(n)]
    return tuple(torch.from_numpy(np.stack([s[k] for s in samples])) for k in ("image", "label", "rater_mask"))


def dice_per_output(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Dice of output r (logits > 0) with rater r, averaged over the batch: (R,)."""
    pred = (logits > 0).float()
    inter = (pred * label).sum((-1, -2))
    return (2 * inter / (pred.sum((-1, -2)) + label.sum((-1, -2))).clamp(min=1e-8)).mean(0)


def fit(net, data, steps: int, target: torch.Tensor | None = None, batch: int = 16, lr: float = 3e-3) -> None:
    """``steps`` Adam steps of ``net.training_objective`` on random batches of ``data`` (seeded draws);
    ``target`` replaces the rater stack (a fused label)."""
    optimizer = torch.optim.Adam(net.parameters_to_train(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, data[0].shape[0], (batch,), generator=g)
        label = data[1][idx] if target is None else target[idx]
        loss = net.train().training_objective(data[0][idx], label, data[2][idx])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
