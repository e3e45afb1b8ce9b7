"""Rater agreement as a multi-class label (AVAP, Guo et al., eq. 2) and back to a calibrated map.

AVAP's annotator-variation module (AVM) learns the rater stack as ONE multi-class segmentation per
structure: pixel class ``m`` means "exactly m of the R raters marked this pixel",

    M(x) = sum_r y_r(x),    0 <= M(x) <= R,   R + 1 classes (class 0 = background).

Divided by R, a predicted class map is a calibrated probability: 0.5 where half the raters would
mark the pixel. :func:`agreement_label` builds the training target; :func:`agreement_probability`
turns the network's (R + 1)-class logits back into that map.

Several structures (RIGA: optic disc and cup) follow the project's structure-major label layout
``(R * K, *spatial)``: the result has one agreement label per structure, ``(K, *spatial)``.

Missing raters (``rater_mask`` False; LIDC nodules have 1-4 readers). Eq. 2 counts over all R
raters, so a sample with fewer readers needs a rule. ``missing="rescale"`` (default) keeps the
meaning of the classes, the *fraction* of raters: ``M = round(R * count / present)``, so two of two
present readers is class R, one of two is class R/2 (rounded half to even: ``torch.round``).
``missing="error"`` refuses such samples instead, naming the fix.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

from ..utils.errors import MultiRaterDataError

__all__ = [
    "MISSING_RATER_RULES",
    "CALIBRATION_MODES",
    "agreement_label",
    "agreement_probability",
    "AgreementLabel",
    "AgreementLabeld",
    "AgreementLabelD",
    "AgreementLabelDict",
    "AgreementProbabilityd",
    "AgreementProbabilityD",
    "AgreementProbabilityDict",
]

MISSING_RATER_RULES = ("rescale", "error")
CALIBRATION_MODES = ("argmax", "expectation", "median")


def _structure_split(channels: int, num_structures: int) -> int:
    if num_structures < 1 or channels % num_structures:
        raise MultiRaterDataError(
            f"the rater stack has {channels} channels, which is not num_raters x num_structures for "
            f"num_structures={num_structures}; fix: set num_structures to the datalist's 'structures' count "
            "(label_channels = num_raters * num_structures, structure-major)."
        )
    return channels // num_structures


def agreement_label(
    rater_stack: torch.Tensor,
    rater_mask: torch.Tensor | None = None,
    num_structures: int = 1,
    missing: str = "rescale",
) -> torch.Tensor:
    """Batched eq. 2: ``(B, R * K, *sp)`` binary rater stack -> ``(B, K, *sp)`` long agreement classes in [0, R].

    Args:
        rater_stack: (B, R * K, *spatial), values in {0, 1}, structure-major.
        rater_mask: (B, R * K) or (B, R) bool (a rater missing for one structure is missing for all
            when given per rater); None = every rater present.
        num_structures: K.
        missing: ``"rescale"`` or ``"error"`` (see the module docstring).
    """
    if missing not in MISSING_RATER_RULES:
        raise ValueError(f"missing must be one of {MISSING_RATER_RULES}, got {missing!r}.")
    stack = convert_to_tensor(rater_stack, track_meta=False)
    if stack.ndim < 3:
        raise MultiRaterDataError(
            f"agreement_label expects a batched rater stack (B, R * K, *spatial), got shape {tuple(stack.shape)}; "
            "fix: add the batch dim (stack[None]) or use the AgreementLabel transform for one sample."
        )
    batch, channels = stack.shape[:2]
    num_raters = _structure_split(channels, num_structures)
    if stack.is_floating_point() and ((stack != 0) & (stack != 1)).any():
        raise MultiRaterDataError(
            "the rater stack must be binary (0/1); fix: threshold the rater masks first "
            "(monai.transforms.AsDiscreted(threshold=0.5))."
        )
    spatial = stack.shape[2:]
    stack = stack.reshape(batch, num_structures, num_raters, *spatial).to(torch.float32)
    if rater_mask is None:
        present = torch.ones(batch, num_structures, num_raters, dtype=torch.bool, device=stack.device)
    else:
        mask = convert_to_tensor(rater_mask, track_meta=False).to(device=stack.device, dtype=torch.bool)
        if mask.shape == (batch, num_raters):
            mask = mask[:, None, :].expand(batch, num_structures, num_raters)
        elif mask.shape == (batch, channels):
            mask = mask.reshape(batch, num_structures, num_raters)
        else:
            raise MultiRaterDataError(
                f"rater_mask has shape {tuple(mask.shape)}; expected (B, R * K) = ({batch}, {channels}) or "
                f"(B, R) = ({batch}, {num_raters}); fix: pass the rater_mask written by the loading transforms."
            )
        present = mask
    n_present = present.sum(dim=2)  # (B, K)
    if bool((n_present == 0).any()):
        raise MultiRaterDataError(
            "a sample has no annotating rater (rater_mask all False); fix: drop it from the datalist."
        )
    count = (stack * present[..., None].reshape(*present.shape, *([1] * len(spatial)))).sum(dim=2)  # (B, K, *sp)
    if bool((n_present == num_raters).all()):
        return count.round().long()
    if missing == "error":
        raise MultiRaterDataError(
            f"{int((n_present < num_raters).sum())} sample-structure pair(s) have fewer than R={num_raters} raters; "
            "eq. 2 counts over all raters; fix: use missing='rescale' (class = round(R * count / present)) "
            "or drop samples with missing raters."
        )
    scale = (num_raters / n_present.to(torch.float32)).reshape(batch, num_structures, *([1] * len(spatial)))
    return torch.round(count * scale).long()


def agreement_probability(
    logits: torch.Tensor, num_raters: int, num_structures: int = 1, calibration: str = "argmax"
) -> torch.Tensor:
    """``(B, K * (R + 1), *sp)`` agreement-class logits -> ``(B, K, *sp)`` calibrated map in [0, 1].

    ``calibration="argmax"``: the predicted class divided by R (one reading of the paper's "output
    mask values" divided by M, Sec. III-C).
    ``calibration="expectation"``: ``sum_m m * softmax_m / R``, a smooth map with the same range.
    ``calibration="median"``: the ordinal reading, the median class divided by R,
    ``(1/R) * sum_{c=1..R} [P(M >= c) > 0.5]`` with ``P(M >= c) = sum_{m>=c} softmax_m``. Its level
    set at any threshold t is ``{P(M > tR) > 0.5}``, nested in t; unlike the argmax it does not lose
    the thin minority classes between "no rater" and "every rater" (the paper leaves the reading open).
    """
    if calibration not in CALIBRATION_MODES:
        raise ValueError(f"calibration must be one of {CALIBRATION_MODES}, got {calibration!r}.")
    classes = num_raters + 1
    if logits.ndim < 3 or logits.shape[1] != num_structures * classes:
        raise MultiRaterDataError(
            f"agreement logits of shape {tuple(logits.shape)} do not hold K x (R + 1) = {num_structures} x {classes} "
            "channels; fix: set num_raters / num_structures to the network's."
        )
    grouped = logits.reshape(logits.shape[0], num_structures, classes, *logits.shape[2:])
    if calibration == "argmax":
        return grouped.argmax(dim=2).to(logits.dtype) / num_raters
    if calibration == "median":
        prob = torch.softmax(grouped, dim=2)
        # P(M >= c) for c = 1..R: reversed cumulative sum over the classes above 0
        at_least = prob.flip(2).cumsum(dim=2).flip(2)[:, :, 1:]
        return (at_least > 0.5).sum(dim=2).to(logits.dtype) / num_raters
    weights = torch.arange(classes, dtype=logits.dtype, device=logits.device)
    weights = weights.reshape(1, 1, classes, *([1] * (logits.ndim - 2)))
    return (torch.softmax(grouped, dim=2) * weights).sum(dim=2) / num_raters


class AgreementLabel(Transform):
    """One sample: ``(R * K, *sp)`` rater stack (+ ``(R * K,)`` rater mask) -> ``(K, *sp)`` agreement classes.

    The dtype is ``torch.long`` (class indices for ``DiceCELoss(to_onehot_y=True, softmax=True)``).
    ``num_structures`` and ``missing``: see :func:`agreement_label`.
    """

    def __init__(self, num_structures: int = 1, missing: str = "rescale") -> None:
        if missing not in MISSING_RATER_RULES:
            raise ValueError(f"missing must be one of {MISSING_RATER_RULES}, got {missing!r}.")
        self.num_structures = num_structures
        self.missing = missing

    def __call__(self, rater_stack, rater_mask=None) -> torch.Tensor:
        stack = convert_to_tensor(rater_stack, track_meta=False)
        if stack.ndim < 2:
            raise MultiRaterDataError(
                f"AgreementLabel expects a channel-first rater stack (R * K, *spatial), got shape {tuple(stack.shape)}."
            )
        mask = None if rater_mask is None else convert_to_tensor(rater_mask, track_meta=False).reshape(1, -1)
        return agreement_label(stack[None], mask, self.num_structures, self.missing)[0]


class AgreementLabeld(MapTransform):
    """Dictionary twin of :class:`AgreementLabel`: writes ``d[output_key]`` from ``d[key]`` and ``d[rater_mask_key]``.

    The rater stack stays as it is (the personalized outputs still need it).
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        output_key: str = "agreement_label",
        rater_mask_key: str | None = "rater_mask",
        num_structures: int = 1,
        missing: str = "rescale",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.rater_mask_key = rater_mask_key
        self.converter = AgreementLabel(num_structures, missing)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        mask = d.get(self.rater_mask_key) if self.rater_mask_key is not None else None
        for key in self.key_iterator(d):
            d[self.output_key] = self.converter(d[key], mask)
        return d


class AgreementProbabilityd(MapTransform):
    """Post-processing: ``d[key]`` (K * (R + 1), *sp) agreement logits -> ``d[output_key]`` (K, *sp) calibrated map."""

    def __init__(
        self,
        keys: KeysCollection = "agreement_logits",
        output_key: str = "calibrated",
        num_raters: int = 4,
        num_structures: int = 1,
        calibration: str = "argmax",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if calibration not in CALIBRATION_MODES:
            raise ValueError(f"calibration must be one of {CALIBRATION_MODES}, got {calibration!r}.")
        self.output_key = output_key
        self.num_raters, self.num_structures, self.calibration = num_raters, num_structures, calibration

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            logits = convert_to_tensor(d[key], track_meta=False)
            calibrated = agreement_probability(logits[None], self.num_raters, self.num_structures, self.calibration)[0]
            d[self.output_key] = convert_to_dst_type(calibrated, d[key])[0]  # keeps the image's meta for saving
        return d


AgreementLabelD = AgreementLabelDict = AgreementLabeld
AgreementProbabilityD = AgreementProbabilityDict = AgreementProbabilityd
