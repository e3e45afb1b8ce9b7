"""The two loss terms of TAB and PADL, per structure: a consensus sample against every present rater, and each
rater's sample against that rater's own mask."""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["structure_terms"]


def structure_terms(
    samples: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor, num_structures: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(consensus, rater)``, each summed over the K structures.

    Args:
        samples: logit draws ``(B, M, K * (R + 1), H, W)``: per structure a block of R + 1 channels, its
            consensus first, then its R raters.
        label: the rater stack ``(B, K * R, H, W)`` (structure-major, float).
        rater_mask: ``(B, K * R)`` bool; an absent (image, structure, rater) takes no part.
        num_structures: K.

    Per structure k: ``consensus_k`` is the binary cross entropy (mean over pixels, over the M draws) of
    structure k's consensus draw against each present rater's mask of structure k, mean over the present
    (image, rater) pairs of structure k; ``rater_k`` the same for rater r's own draw against rater r's mask.
    Both are summed over the structures (so with K structures each term is the sum of K one-structure
    terms); a structure with no present pair in the batch adds 0.
    """
    b, m, k = samples.shape[0], samples.shape[1], int(num_structures)
    r = label.shape[1] // k
    h, w = samples.shape[-2], samples.shape[-1]
    samples = samples.reshape(b, m, k, r + 1, h, w)
    target = label.reshape(b, 1, k, r, h, w).expand(-1, m, -1, -1, -1, -1)
    consensus_ce = F.binary_cross_entropy_with_logits(samples[:, :, :, :1].expand(-1, -1, -1, r, -1, -1), target,
                                                      reduction="none").mean((-1, -2)).mean(1)  # (B, K, R)
    rater_ce = F.binary_cross_entropy_with_logits(samples[:, :, :, 1:], target, reduction="none").mean((-1, -2)).mean(1)
    weights = rater_mask.reshape(b, k, r).to(samples.dtype)
    pairs = weights.sum((0, 2)).clamp(min=1.0)  # (K,): present pairs per structure (0 -> the term is 0)
    consensus = ((consensus_ce * weights).sum((0, 2)) / pairs).sum()
    rater = ((rater_ce * weights).sum((0, 2)) / pairs).sum()
    return consensus, rater
