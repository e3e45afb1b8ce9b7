"""Split one multi-channel output into named groups of channels (post-processing).

A network that returns several kinds of output in one tensor (D-Persona's ``"personalized+samples"``
mode: R personalized outputs, then S samples) keeps one forward pass and one TorchScript graph; the
inference bundle then splits the channels into named keys that are saved and drawn separately.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["SplitChannelGroupsd", "SplitChannelGroupsD", "SplitChannelGroupsDict"]


class SplitChannelGroupsd(MapTransform):
    """``d[key]`` (C, ...) -> ``d[output_keys[i]]`` = the next ``sizes[i]`` channels, in order.

    Args:
        keys: the key to split (one key).
        output_keys: names of the groups, e.g. ``["personalized", "samples"]``.
        sizes: channels per group; they must add up to the channel count.
    """

    def __init__(self, keys: KeysCollection, output_keys: Sequence[str], sizes: Sequence[int],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(output_keys) != len(sizes):
            raise ValueError(f"output_keys {list(output_keys)} and sizes {list(sizes)} must have the same length.")
        self.output_keys = list(output_keys)
        self.sizes = [int(s) for s in sizes]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            channels = d[key].shape[0]
            if channels != sum(self.sizes):
                raise ValueError(
                    f"'{key}' has {channels} channels but the groups {dict(zip(self.output_keys, self.sizes))} "
                    f"add up to {sum(self.sizes)}; set the group sizes to the network's outputs."
                )
            for name, part in zip(self.output_keys, torch.split(d[key], self.sizes, dim=0)):
                d[name] = part
        return d


SplitChannelGroupsD = SplitChannelGroupsDict = SplitChannelGroupsd
