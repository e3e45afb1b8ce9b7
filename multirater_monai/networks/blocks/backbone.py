"""U-Net feature backbone shared by the latent-variable methods (Prob U-Net, D-Persona, ...).

The latent methods need the U-Net's last feature map, not a segmentation: a head combines it with
a latent code afterwards. Two encoders:

* ``"resnet34"``: MONAI ``FlexibleUNet`` with a ResNet34 encoder (``pretrained=False``), the
  architecture of the D-Persona paper (ResNet34-encoder U-Net, 16 feature channels; 23.65 M
  parameters with ``feature_channels=16``). Its output layer is a 3x3 convolution to
  ``feature_channels``, used here as the feature map. Note: MONAI's ResNet blocks cannot be
  compiled by ``torch.jit.script`` (MONAI 1.6.1); export networks using this encoder with
  ``torch.jit.trace`` (``ckpt_export --use_trace``).
* ``"small"``: MONAI ``UNet`` with configurable ``channels``/``strides``, the CPU default and the
  test model (about 0.4 M parameters with the defaults); scriptable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from monai.networks.nets import FlexibleUNet, UNet
from torch import nn

__all__ = ["UNetFeatureBackbone", "BackboneConfig", "BACKBONE_ENCODERS"]

BACKBONE_ENCODERS = ("resnet34", "small")


class UNetFeatureBackbone(nn.Module):
    """U-Net that returns its last feature map ``(B, feature_channels, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        feature_channels: channels of the returned feature map (paper: 16).
        encoder: ``"resnet34"`` (paper) or ``"small"`` (CPU default).
        channels: ``"small"`` only: channels per U-Net level.
        strides: ``"small"`` only: strides between levels (``len(channels) - 1`` entries).
        num_res_units: ``"small"`` only: residual units per level.
        norm: normalisation of both encoders (MONAI layer-factory name or tuple).
        decoder_channels: ``"resnet34"`` only: FlexibleUNet decoder channels.
    """

    __jit_unused_properties__ = ["spatial_divisor"]

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        feature_channels: int = 16,
        encoder: str = "resnet34",
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] | None = None,
        num_res_units: int = 2,
        norm: str | tuple = "batch",
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        if encoder not in BACKBONE_ENCODERS:
            raise ValueError(f"encoder must be one of {BACKBONE_ENCODERS}, got {encoder!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.feature_channels = feature_channels
        self.encoder = encoder
        if encoder == "resnet34":
            self.net: nn.Module = FlexibleUNet(
                in_channels=in_channels,
                out_channels=feature_channels,
                backbone="resnet34",
                pretrained=False,
                decoder_channels=tuple(decoder_channels),
                spatial_dims=spatial_dims,
                norm=norm,
            )
        else:
            channels = tuple(channels)
            strides = tuple(strides) if strides is not None else (2,) * (len(channels) - 1)
            self.net = UNet(
                spatial_dims=spatial_dims,
                in_channels=in_channels,
                out_channels=feature_channels,
                channels=channels,
                strides=strides,
                num_res_units=num_res_units,
                norm=norm,
            )

    @property
    def spatial_divisor(self) -> int:
        """Every input size must be a multiple of this (the product of the encoder's down-samplings)."""
        if self.encoder == "resnet34":
            return 32
        return math.prod(self.net.strides)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


@dataclass(frozen=True)
class BackboneConfig:
    """The backbone settings of a method, as one object (one ``_target_`` in a bundle config).

    Every method network takes ``backbone=BackboneConfig(...)`` in its ``build``; the fields are those
    of :class:`UNetFeatureBackbone`. The default is the CPU default of the bundles (small MONAI UNet).
    """

    spatial_dims: int = 2
    in_channels: int = 1
    feature_channels: int = 16
    encoder: str = "small"
    channels: Sequence[int] = (16, 32, 64, 128)
    strides: Sequence[int] | None = None
    num_res_units: int = 2
    norm: str | tuple = "batch"
    decoder_channels: Sequence[int] = field(default=(256, 128, 64, 32, 16))

    def __post_init__(self) -> None:
        if self.encoder not in BACKBONE_ENCODERS:
            raise ValueError(f"encoder must be one of {BACKBONE_ENCODERS}, got {self.encoder!r}.")
        # lists from a JSON config become tuples: the object stays hashable and comparable
        for name in ("channels", "strides", "decoder_channels"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))

    @property
    def spatial_divisor(self) -> int:
        """Input sizes must be multiples of this (what the preprocessing pads to); no network is built."""
        if self.encoder == "resnet34":
            return 32
        strides = self.strides if self.strides is not None else (2,) * (len(self.channels) - 1)
        return math.prod(strides)

    def build(self, feature_channels: int | None = None) -> UNetFeatureBackbone:
        """The backbone; ``feature_channels`` overrides the configured number of output channels."""
        return UNetFeatureBackbone(
            self.spatial_dims, self.in_channels, self.feature_channels if feature_channels is None else feature_channels,
            encoder=self.encoder, channels=self.channels, strides=self.strides, num_res_units=self.num_res_units,
            norm=self.norm, decoder_channels=self.decoder_channels,
        )
