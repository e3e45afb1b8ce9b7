"""MH-UNet: a U-Net with one segmentation head per rater (the multi-head baseline of AVAP and D-Persona).

Guan et al. (AAAI 2018, "Who said what") model each labeller with an output head of its own on a
shared network; the AVAP paper's MH-UNet is that design on a (Res-)U-Net for segmentation: "a variant
of Res-U-Net with multiple segmentation heads, each used to mimic annotations from a specific
annotator". Here: the shared :class:`UNetFeatureBackbone` and a 1x1 convolution to ``K * R`` logits,
one per (structure, rater), structure-major like the rater stack. A 1x1 convolution to K * R
channels is R independent 1x1 heads evaluated at once (no head sees another head's weights).

Training: every PRESENT rater's channel learns that rater's mask, Dice over the batch + binary cross
entropy (:class:`~multirater_monai.losses.PresentRaterDiceBCELoss`); a missing rater's channel is
never a target. The parameter count of the heads grows with R, which is what AVAP's dynamic
filters avoid.

Inference ``forward(image) -> (B, K * R, *sp)``: the personalized logits. :meth:`split_outputs` gives
``personalized`` (K * R) probabilities and ``calibrated`` (K): the mean of the raters' probabilities
per structure, the consensus this model implies.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn

from ...losses.present_rater_dice_bce import PresentRaterDiceBCELoss
from ...utils.errors import MultiRaterDataError
from ..blocks.backbone import BackboneConfig
from ..method import MultiRaterMethod

__all__ = ["MultiHeadUNet"]


class MultiHeadUNet(MultiRaterMethod):
    """Shared U-Net backbone + one output head per (structure, rater); see the module docstring.

    Args:
        backbone: feature network ``image -> (B, feature_channels, *sp)``.
        num_raters: R.
        feature_channels: channels of the backbone output.
        num_structures: K.
        spatial_dims: 2 or 3.
        dice_weight, bce_weight: weights of the two loss terms.
    """

    output_modes = ("personalized",)

    def __init__(
        self,
        backbone: nn.Module,
        num_raters: int,
        feature_channels: int,
        num_structures: int = 1,
        spatial_dims: int = 2,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
    ) -> None:
        super().__init__(num_raters, num_structures)
        self.backbone = backbone
        self.heads = Conv[Conv.CONV, spatial_dims](feature_channels, self.num_structures * self.num_raters, kernel_size=1)
        self.dice_weight, self.bce_weight = float(dice_weight), float(bce_weight)
        self._losses = {"rater": PresentRaterDiceBCELoss()}  # no state; kept out of the module tree

    @classmethod
    def build(cls, num_raters: int = 4, num_structures: int = 1, backbone: BackboneConfig | None = None,
              **kwargs: Any) -> MultiHeadUNet:
        """The whole network from plain arguments; ``kwargs`` go to the constructor (loss weights)."""
        config = backbone or BackboneConfig()
        return cls(config.build(), num_raters, config.feature_channels, num_structures=num_structures,
                   spatial_dims=config.spatial_dims, **kwargs)

    def output_groups(self) -> dict[str, int]:
        return {"personalized": self.num_structures * self.num_raters}

    @torch.jit.unused
    def split_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.add_rater_views(super().split_outputs(logits))  # calibrated: the mean of the rater heads

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.heads(self.backbone(image))

    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "dice", "bce"}``; ``label`` (B, K * R, *sp), ``rater_mask`` (B, K * R) or (B, R)."""
        channels = self.num_structures * self.num_raters
        if label.dim() != image.dim() or label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:] \
                or label.shape[1] != channels:
            raise MultiRaterDataError(
                f"rater stack {tuple(label.shape)} does not fit image {tuple(image.shape)} and the network's "
                f"K x R = {self.num_structures} x {self.num_raters} outputs; fix: set num_raters / num_structures "
                "to the datalist's."
            )
        if rater_mask is None:
            present = torch.ones(label.shape[:2], dtype=torch.bool, device=label.device)
        else:
            present = torch.as_tensor(rater_mask, device=label.device).to(torch.bool)
            if present.shape == (label.shape[0], self.num_raters):
                present = present.repeat(1, self.num_structures)
        dice, bce = self._losses["rater"](self(image), label.to(image.dtype), present)
        return {"loss": self.dice_weight * dice + self.bce_weight * bce, "dice": dice, "bce": bce}
