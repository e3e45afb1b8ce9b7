"""The output groups of methods with one consensus Gaussian and one per rater (TAB, PADL), per structure."""

from __future__ import annotations

import torch

from .method import MultiRaterMethod

__all__ = ["ConsensusRaterMethod"]


class ConsensusRaterMethod(MultiRaterMethod):
    """A :class:`MultiRaterMethod` whose ``output_mode`` names any of ``personalized`` (K * R rater means),
    ``consensus`` (K maps) and ``samples`` (K * S: the subclass's ``num_samples`` draws of each structure's
    consensus), in that order; every group structure-major (the rater stack's layout, DESIGN.md), as
    MR-Net's.

    ``split_outputs`` also gives ``calibrated``: the consensus maps, or per structure the mean of its R rater
    outputs when the consensus was not asked for; a consensus-only run gives every rater its structure's
    consensus (a rater-blind row, as FusionUNet's), so the per-rater tables can score it."""

    def output_groups(self) -> dict[str, int]:
        k = self.num_structures
        groups: dict[str, int] = {}
        if "personalized" in self.output_mode:
            groups["personalized"] = k * self.num_raters
        if "consensus" in self.output_mode:
            groups["consensus"] = k
        if "samples" in self.output_mode:
            groups["samples"] = k * self.num_samples
        return groups

    @torch.jit.unused
    def split_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.add_rater_views(super().split_outputs(logits))
