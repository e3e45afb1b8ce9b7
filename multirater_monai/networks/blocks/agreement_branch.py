"""AVAP's annotator-variation branch: feature map -> (R + 1)-class agreement logits for one structure.

Guo et al., Sec. III-C and Fig. 2(b): three blocks; each of the first two is two 3x3 convolutions,
each followed by ReLU and BatchNorm (the paper's order); the third is a 1x1 convolution to the R + 1
agreement classes (class m: exactly m raters marked the pixel, see ``data/agreement_label.py``).
One branch per structure (RIGA: disc and cup).
"""

from __future__ import annotations

from monai.networks.layers import Conv, Norm
from torch import nn

__all__ = ["AgreementBranch"]


class AgreementBranch(nn.Sequential):
    """``(B, in_channels, *sp) -> (B, num_raters + 1, *sp)`` agreement-class logits.

    Args:
        in_channels: channels of the backbone's feature map.
        num_raters: R (the branch predicts R + 1 classes).
        hidden_channels: channels of the four 3x3 convolutions.
        spatial_dims: 2 or 3.
    """

    def __init__(self, in_channels: int, num_raters: int, hidden_channels: int = 16, spatial_dims: int = 2) -> None:
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(4):  # two blocks of two convolutions
            layers += [conv(channels, hidden_channels, 3, padding=1), nn.ReLU(inplace=True), norm(hidden_channels)]
            channels = hidden_channels
        layers.append(conv(channels, num_raters + 1, 1))
        super().__init__(*layers)
        self.num_classes = num_raters + 1
