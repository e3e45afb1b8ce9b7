"""Agreement (uncertainty) map of a set of masks: the fraction of outputs that mark each pixel.

Used as post-processing of generation and personalized methods: from S sampled or R
personalized outputs, 0 means no output marks the pixel, 1 means all do, and values in between
show where the plausible segmentations disagree.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["AgreementMap", "AgreementMapd", "AgreementMapD", "AgreementMapDict"]


class AgreementMap(Transform):
    """(S, H, W[, D]) probabilities or masks -> (1, H, W[, D]) fraction of outputs above ``threshold``."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def __call__(self, outputs: torch.Tensor) -> torch.Tensor:
        if outputs.ndim < 3:
            raise ValueError(f"AgreementMap expects channel-first outputs (S, H, W[, D]); got shape {tuple(outputs.shape)}")
        return (outputs > self.threshold).float().mean(dim=0, keepdim=True)


class AgreementMapd(MapTransform):
    """Dictionary twin of :class:`AgreementMap`: writes the map of ``keys`` into ``output_key``."""

    def __init__(self, keys: KeysCollection = "pred", output_key: str = "agreement", threshold: float = 0.5,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.agreement = AgreementMap(threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = self.agreement(d[key])
        return d


AgreementMapD = AgreementMapDict = AgreementMapd
