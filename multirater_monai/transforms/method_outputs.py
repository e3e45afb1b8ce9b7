"""Post-processing: a method's one-tensor output split into its named groups (personalized, samples, calibrated, ...).

The network returns one tensor of logits (one forward pass, one TorchScript graph); which channels
are what depends on the method and its output mode. The method says so itself
(:meth:`MultiRaterMethod.split_outputs`), so one transform serves every bundle: it writes each group's
probabilities under the group's name (``personalized``, ``samples``, ``calibrated``, ``consensus``)
and replaces ``pred`` by the sigmoid probabilities of every channel (what the set metrics read).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from ..networks.method import MultiRaterMethod

__all__ = ["MethodOutputsd"]


class MethodOutputsd(MapTransform):
    """``d[key]`` logits ``(C, *sp)`` -> ``d[group]`` probabilities for each of ``network``'s output groups.

    Args:
        keys: the network output key (one key, usually ``"pred"``).
        network: the :class:`MultiRaterMethod` whose output this is (its current output mode decides the groups).
        sigmoid_pred: also replace ``d[key]`` by ``sigmoid(d[key])``.
    """

    def __init__(self, keys: KeysCollection = "pred", network: MultiRaterMethod | None = None,
                 sigmoid_pred: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(network, MultiRaterMethod):
            raise TypeError(f"MethodOutputsd needs the bundle's MultiRaterMethod network, got {type(network).__name__}.")
        self.network = network
        self.sigmoid_pred = sigmoid_pred

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            out = d[key]
            logits = convert_to_tensor(out, track_meta=False)
            for name, probabilities in self.network.split_outputs(logits).items():
                d[name] = convert_to_dst_type(probabilities, out)[0]  # keeps the image's meta, for saving
            if self.sigmoid_pred:
                d[key] = torch.sigmoid(out)
        return d
