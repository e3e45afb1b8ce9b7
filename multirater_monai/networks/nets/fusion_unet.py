"""U-Net on one fused label: the rater-blind and single-rater baselines (majority vote, random rater,
STAPLE, mean, union, intersection, rater k).

The fusion itself is data preprocessing (:class:`~multirater_monai.data.FuseRatersd`: STAPLE runs in
SimpleITK on each sample, the random rater is drawn per sample and epoch), so the training objective
receives the rater stack already fused to one channel per structure. The network is a MONAI ``UNet``
whose output channels are the K structures' logits; the loss is MONAI's ``DiceCELoss`` with the Dice
over the whole batch (``batch=True``: empty slices do not weigh like whole lesions).

Inference ``forward(image) -> (B, K, *sp)``: one ``consensus`` output per structure. :meth:`split_outputs`
also gives what the other methods' tables read: ``calibrated`` (the consensus probability itself) and
``personalized`` (K * R: a rater-blind model gives every rater the same mask), so a U-Net is scored in
the same 'Mean Voting' / 'Average' table as AVAP and MH-UNet.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import nn

from ...utils.errors import MultiRaterDataError
from ..blocks.backbone import BackboneConfig
from ..method import MultiRaterMethod

__all__ = ["FusionUNet"]


class FusionUNet(MultiRaterMethod):
    """A segmentation network trained on a fused label; see the module docstring.

    Args:
        net: ``image -> (B, num_structures, *sp)`` logits.
        num_raters: R of the data (the evaluation compares the output with every rater).
        num_structures: K.
    """

    output_modes = ("consensus",)

    def __init__(self, net: nn.Module, num_raters: int, num_structures: int = 1) -> None:
        super().__init__(num_raters, num_structures)
        self.backbone = net
        self._losses = {"seg": DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)}

    @classmethod
    def build(cls, num_raters: int = 4, num_structures: int = 1, backbone: BackboneConfig | None = None,
              **kwargs: Any) -> FusionUNet:
        """A MONAI ``UNet`` with ``backbone``'s settings and ``num_structures`` output channels."""
        config = backbone or BackboneConfig()
        return cls(config.build(feature_channels=num_structures), num_raters, num_structures, **kwargs)

    def output_groups(self) -> dict[str, int]:
        return {"consensus": self.num_structures}

    @torch.jit.unused
    def split_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.add_rater_views(super().split_outputs(logits))  # rater-blind: each rater gets the consensus

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(image)

    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss"}``: Dice + CE of the logits against the fused label ``(B, K, *sp)``."""
        if label.shape[1] != self.num_structures or label.shape[2:] != image.shape[2:]:
            raise MultiRaterDataError(
                f"FusionUNet trains on the fused label, one channel per structure ({self.num_structures}), but got "
                f"{tuple(label.shape)} for image {tuple(image.shape)}; fix: fuse the raters in the training "
                "preprocessing (multirater_monai.data.FuseRatersd)."
            )
        return {"loss": self._losses["seg"](self(image), label.to(image.dtype))}
