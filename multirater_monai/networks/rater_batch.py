"""Checks and draws on a multi-rater training batch (image, rater stack, rater mask), shared by the methods."""

from __future__ import annotations

import torch

from ..utils.errors import MultiRaterDataError

__all__ = ["check_multirater_batch", "random_present_rater"]


def check_multirater_batch(
    image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None, num_raters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (image, rater stack, rater mask) batch; returns the float label and bool mask."""
    if label.dim() != image.dim() or label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:]:
        raise MultiRaterDataError(
            f"rater stack {tuple(label.shape)} does not match image {tuple(image.shape)}: expected "
            "(B, R, *spatial) with the image's batch and spatial size; check the loading transforms."
        )
    if label.shape[1] != num_raters:
        raise MultiRaterDataError(
            f"the batch has {label.shape[1]} rater channels but the network was built for num_raters="
            f"{num_raters}; set num_raters in the config to the datalist's num_raters."
        )
    if rater_mask is None:
        rater_mask = torch.ones(label.shape[:2], dtype=torch.bool, device=label.device)
    rater_mask = torch.as_tensor(rater_mask, device=label.device).to(torch.bool)
    if rater_mask.shape != label.shape[:2]:
        raise MultiRaterDataError(f"rater_mask {tuple(rater_mask.shape)} must be (B, R) = {tuple(label.shape[:2])}.")
    return label.to(image.dtype), rater_mask


def random_present_rater(
    label: torch.Tensor, rater_mask: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each sample, the mask of one rater chosen uniformly among the PRESENT ones: ``(B, 1, *sp)``."""
    weights = rater_mask.to(torch.float32)
    if not bool((weights.sum(1) > 0).all()):
        raise MultiRaterDataError(
            "a sample has no annotating rater (rater_mask all False); drop such samples from the datalist."
        )
    index = torch.multinomial(weights.cpu(), 1, generator=generator).to(label.device)  # (B, 1)
    index = index.view(index.shape + (1,) * (label.dim() - 2)).expand(-1, -1, *label.shape[2:])
    return torch.gather(label, 1, index)


def check_structured_batch(
    image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None, num_raters: int, num_structures: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of K structures by R raters: float label ``(B, K * R, *sp)`` (structure-major) and bool mask
    ``(B, K * R)``; ``rater_mask`` may be ``(B, K * R)``, ``(B, R)`` (the same raters for every structure) or
    None (all present). Shape mismatches stop with one message that names the fix."""
    channels = num_raters * num_structures
    if label.dim() != image.dim() or label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:]:
        raise MultiRaterDataError(
            f"rater stack {tuple(label.shape)} does not match image {tuple(image.shape)}: expected "
            "(B, K * R, *spatial) with the image's batch and spatial size; check the loading transforms."
        )
    if label.shape[1] != channels:
        raise MultiRaterDataError(
            f"the batch has {label.shape[1]} rater channels but the network was built for num_raters="
            f"{num_raters} x num_structures={num_structures} = {channels}; set num_raters and "
            "num_structures in the config to the datalist's (label_channels = num_raters * num_structures)."
        )
    batch = label.shape[0]
    if rater_mask is None:
        return label.to(image.dtype), torch.ones(batch, channels, dtype=torch.bool, device=label.device)
    mask = torch.as_tensor(rater_mask, device=label.device).to(torch.bool)
    if mask.shape == (batch, num_raters):
        mask = mask.repeat(1, num_structures)
    if mask.shape != (batch, channels):
        raise MultiRaterDataError(
            f"rater_mask {tuple(mask.shape)} must be (B, R * K) = ({batch}, {channels}) or (B, R)."
        )
    return label.to(image.dtype), mask
