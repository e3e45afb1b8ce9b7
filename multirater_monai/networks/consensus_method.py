"""The output groups of methods with one consensus Gaussian and one per rater (TAB, PADL)."""

from __future__ import annotations

import torch

from .method import MultiRaterMethod

__all__ = ["ConsensusRaterMethod"]


class ConsensusRaterMethod(MultiRaterMethod):
    """A :class:`MultiRaterMethod` whose ``output_mode`` names any of ``personalized`` (R rater means),
    ``consensus`` (one map) and ``samples`` (the subclass's ``num_samples`` draws of the consensus), in that order.

    ``split_outputs`` also gives ``calibrated``: the consensus map, or the mean of the rater outputs when
    the consensus was not asked for; a consensus-only run gives every rater the consensus (a rater-blind
    row, as FusionUNet's), so the per-rater tables can score it."""

    def output_groups(self) -> dict[str, int]:
        groups: dict[str, int] = {}
        if "personalized" in self.output_mode:
            groups["personalized"] = self.num_raters
        if "consensus" in self.output_mode:
            groups["consensus"] = 1
        if "samples" in self.output_mode:
            groups["samples"] = self.num_samples
        return groups

    @torch.jit.unused
    def split_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().split_outputs(logits)
        if "consensus" in out:
            out["calibrated"] = out["consensus"]
            if "personalized" not in out:
                out["personalized"] = out["consensus"].expand(self.num_raters, *out["consensus"].shape[1:])
        elif "personalized" in out:
            out["calibrated"] = out["personalized"].mean(0, keepdim=True)
        return out
