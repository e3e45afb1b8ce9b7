"""Post-processing of AVAP's one-tensor output: the calibrated map per structure and every rater's mask.

``AVAP.forward`` returns ``K * (R + 1)`` agreement-class logits then ``K * R`` per-rater logits
(structure-major, see ``networks/avap.py``), so one forward pass and one TorchScript graph serve
both outputs. This transform splits one decollated item into the keys the evaluation handlers and
the inference writer read: ``calibrated`` (K, *sp) in [0, 1] and ``personalized`` (K * R, *sp)
sigmoid probabilities.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from .agreement_label import CALIBRATION_MODES, agreement_probability
from ..utils.errors import MultiRaterDataError

__all__ = ["AVAPOutputsd", "AVAPOutputsD", "AVAPOutputsDict"]


class AVAPOutputsd(MapTransform):
    """``d[key]`` (K * (R + 1) + K * R, *sp) logits -> ``d[calibrated_key]`` (K, *sp), ``d[personalized_key]`` (K * R, *sp).

    Args:
        keys: the network output key (one key).
        num_raters: R; num_structures: K.
        calibration: ``"argmax"`` (the paper) or ``"expectation"``; see ``agreement_probability``.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        num_raters: int = 4,
        num_structures: int = 1,
        calibration: str = "argmax",
        calibrated_key: str = "calibrated",
        personalized_key: str = "personalized",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if calibration not in CALIBRATION_MODES:
            raise ValueError(f"calibration must be one of {CALIBRATION_MODES}, got {calibration!r}.")
        self.num_raters, self.num_structures, self.calibration = int(num_raters), int(num_structures), calibration
        self.calibrated_key, self.personalized_key = calibrated_key, personalized_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        r, k = self.num_raters, self.num_structures
        n_agreement = k * (r + 1)
        for key in self.key_iterator(d):
            out = d[key]
            if out.shape[0] != n_agreement + k * r:
                raise MultiRaterDataError(
                    f"'{key}' has {out.shape[0]} channels; AVAP with R={r} raters and K={k} structures gives "
                    f"K(R+1) + KR = {n_agreement + k * r}; fix: set num_raters / num_structures to the network's "
                    "and its output_mode to 'all'."
                )
            logits = convert_to_tensor(out, track_meta=False)
            calibrated = agreement_probability(logits[None, :n_agreement], r, k, self.calibration)[0]
            d[self.calibrated_key] = convert_to_dst_type(calibrated, out)[0]  # the image's meta, for saving
            d[self.personalized_key] = convert_to_dst_type(torch.sigmoid(logits[n_agreement:]), out)[0]
        return d


AVAPOutputsD = AVAPOutputsDict = AVAPOutputsd
