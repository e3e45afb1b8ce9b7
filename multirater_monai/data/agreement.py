"""Agreement (uncertainty) map of a set of masks: the fraction of outputs that mark each pixel.

Used as post-processing of generation and personalized methods: from S sampled or R
personalized outputs, 0 means no output marks the pixel, 1 means all do, and values in between
show where the plausible segmentations disagree. With K structures the outputs are structure-major
(K * S channels, structure k's S together) and the map has one channel per structure.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["AgreementMap", "AgreementMapd", "AgreementMapD", "AgreementMapDict"]


class AgreementMap(Transform):
    """(K * S, H, W[, D]) probabilities or masks -> (K, H, W[, D]): per structure the fraction of its S outputs
    above ``threshold`` (``num_structures`` K, default 1)."""

    def __init__(self, threshold: float = 0.5, num_structures: int = 1) -> None:
        self.threshold = threshold
        self.num_structures = int(num_structures)

    def __call__(self, outputs: torch.Tensor) -> torch.Tensor:
        if outputs.ndim < 3:
            raise ValueError(f"AgreementMap expects channel-first outputs (S, H, W[, D]); got shape {tuple(outputs.shape)}")
        k = self.num_structures
        if outputs.shape[0] % k:
            raise ValueError(f"AgreementMap: {outputs.shape[0]} outputs are not num_structures={k} groups of S; "
                             "fix: set num_structures to the network's.")
        marked = (outputs > self.threshold).float()
        return marked.reshape(k, outputs.shape[0] // k, *outputs.shape[1:]).mean(dim=1)


class AgreementMapd(MapTransform):
    """Dictionary twin of :class:`AgreementMap`: writes the map of ``keys`` into ``output_key``."""

    def __init__(self, keys: KeysCollection = "pred", output_key: str = "agreement", threshold: float = 0.5,
                 allow_missing_keys: bool = False, num_structures: int = 1) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.agreement = AgreementMap(threshold, num_structures)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = self.agreement(d[key])
        return d


AgreementMapD = AgreementMapDict = AgreementMapd
