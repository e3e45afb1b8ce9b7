"""Set-to-set metrics for multi-rater segmentation: functional core (pure torch, batched).

For one image the *annotation set* A holds the R rater masks (missing raters dropped) and the
*prediction set* P holds the S predicted masks (probabilities thresholded at 0.5). The metrics
compare the two sets (D-Persona, CVPR 2024, section 4.3 and Fig. 3; docs/DESIGN.md section 3):

- ``d(a, b) = 1 - IoU(a, b)``,
  ``GED = 2 E[d(P, A)] - E[d(P, P')] - E[d(A, A')]`` with its three terms ``d_pa, d_pp, d_aa``;
- ``Dice_soft``: mean over thresholds t of ``Dice(mean(P) > t, mean(A) > t)``, where mean(P)
  averages the predicted *probabilities* (not the binarized masks);
- the Dice matrix ``M[s, r] = Dice(P_s, A_r)``, reduced to ``Dice_max`` (mean over raters of the
  best sample), ``Dice_match`` (mean over raters under a one-to-one Hungarian assignment) and the
  identity per-rater Dice ``Dice_Ai`` of personalized outputs.

Every pairwise overlap of one image (samples and raters together) comes out of ONE matrix product
of the flattened binary masks, ``X @ X^T`` with ``X = [P; A]`` of shape (S+R, N): its entries are
the intersections, its diagonal the areas, and unions follow as ``|x| + |y| - |x & y|``. This is
what makes the metrics fast: the published evaluation code builds an (S, S, N) boolean array per
image instead.

Two conventions (``compat``):

``"default"``
    IoU and Dice of two empty masks are 1 (distance 0): two raters who both see nothing agree.
    ``E[d(P, P')]`` and ``E[d(A, A')]`` are expectations over independent draws from the sets,
    i.e. means over all ordered pairs including self-pairs (``n^2`` pairs; a self-pair has
    distance 0). GED is then the energy distance between the two empirical distributions: never
    negative (1 - IoU is of negative type, the Jaccard similarity matrix being positive
    semi-definite) and exactly 0 when the prediction set equals the annotation set. It is also how
    the published numbers were computed, so default and compat differ only on empty masks.
    ``unbiased=True`` instead averages over distinct pairs ``s != s'`` (the U-statistic): unbiased
    for the population quantity but it can be negative, e.g. -2/3 for a perfect prediction set of
    two samples against two raters; with a single element its within-set term is 0.
``"dpersona"``
    Reproduces the published D-Persona evaluation code: ``IoU = |x&y| / (|x|y| + 1e-8)`` so two
    empty masks have distance 1, the within-set means include self-pairs (``n^2`` pairs), and
    ``Dice = (2|x&y| + 1e-8) / (|x| + |y| + 1e-8)``; ``unbiased`` must stay False. (Its tables'
    "Dice_each" is the *matched* value, i.e. the per-rater term of ``Dice_match``, not the identity
    Dice of ``dice_per_rater``.)

Missing raters (``rater_mask`` False) are dropped from every set-level term; their column of the
Dice matrix and their per-rater Dice are NaN. Pairwise counts are exact (float32 sums of 0/1 are
exact below 2**24 voxels; larger inputs switch to float64) and ratios are computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor
from scipy.optimize import linear_sum_assignment

from multirater_monai.utils.errors import MultiRaterDataError

__all__ = [
    "prepare_sets",
    "COMPAT_MODES",
    "DEFAULT_THRESHOLDS",
    "generalized_energy_distance",
    "soft_dice",
    "dice_matrix",
    "dice_max",
    "dice_match",
    "dice_per_rater",
    "dice_max_from_matrix",
    "dice_match_from_matrix",
    "dice_per_rater_from_matrix",
    "compute_set_metrics",
]

COMPAT_MODES = ("default", "dpersona")
DEFAULT_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
_EPS = 1e-8  # the published code's smoothing constant (compat mode only)
_EXACT_FLOAT32_COUNT = 2**24  # float32 represents every integer up to here exactly


# ----------------------------------------------------------------------------- input checks


def _check_compat(compat: str, unbiased: bool = False) -> str:
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}.")
    if unbiased and compat == "dpersona":
        raise ValueError("compat='dpersona' averages over all pairs including self-pairs; use unbiased=False.")
    return compat


def prepare_sets(
    pred: Any, label: Any, rater_mask: Any | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the inputs; return pred (B,S,N) float, label (B,R,N) bool, rater_mask (B,R) bool."""
    # metrics are not differentiable (thresholds), so no autograd graph is kept
    pred = convert_to_tensor(pred, track_meta=False, wrap_sequence=True).detach()
    label = convert_to_tensor(label, track_meta=False, wrap_sequence=True).detach()
    if pred.ndim < 3:
        raise MultiRaterDataError(
            f"pred must be (B, S, *spatial) with at least one spatial dim, got shape {tuple(pred.shape)}; "
            "fix: add the batch and sample dims (e.g. pred[None] for one image)."
        )
    if label.ndim != pred.ndim:
        raise MultiRaterDataError(
            f"pred {tuple(pred.shape)} and label {tuple(label.shape)} must have the same number of dims "
            "((B, S, *spatial) and (B, R, *spatial)); fix: stack the raters on dim 1 of label."
        )
    if label.shape[0] != pred.shape[0]:
        raise MultiRaterDataError(
            f"batch size differs: pred has {pred.shape[0]} images, label has {label.shape[0]}; "
            "fix: pass the labels of the same images as the predictions."
        )
    if label.shape[2:] != pred.shape[2:]:
        raise MultiRaterDataError(
            f"spatial shape differs: pred {tuple(pred.shape[2:])} vs label {tuple(label.shape[2:])}; "
            "fix: resample the prediction to the label grid (e.g. monai.transforms.Resized / Invertd)."
        )
    if pred.shape[1] < 1 or label.shape[1] < 1:
        raise MultiRaterDataError(
            f"need at least one prediction and one rater, got S={pred.shape[1]}, R={label.shape[1]}."
        )
    if pred.dtype != torch.bool and pred.numel():
        # one pass for both checks: aminmax propagates NaN
        low, high = (float(v) for v in torch.aminmax(pred if pred.is_floating_point() else pred.float()))
        if math.isnan(low) or math.isnan(high):
            raise MultiRaterDataError("pred contains NaN; fix: check the network output (NaN weights or input).")
        if low < 0 or high > 1:
            raise MultiRaterDataError(
                f"pred must hold probabilities in [0, 1], got values in [{low:.4g}, {high:.4g}]; "
                "fix: apply a sigmoid to the logits first (monai.transforms.Activations(sigmoid=True))."
            )
    if label.is_floating_point() and torch.isnan(label).any():
        raise MultiRaterDataError("label contains NaN; fix: check the rater mask files.")
    if label.dtype != torch.bool and ((label != 0) & (label != 1)).any():
        raise MultiRaterDataError(
            "label must be binary (values 0 and 1); fix: threshold the rater masks "
            "(monai.transforms.AsDiscrete(threshold=0.5)) or one-hot a label map per structure."
        )

    batch, n_raters = label.shape[:2]
    if rater_mask is None:
        mask = torch.ones(batch, n_raters, dtype=torch.bool, device=label.device)
    else:
        mask = convert_to_tensor(rater_mask, track_meta=False, wrap_sequence=True).to(label.device)
        if tuple(mask.shape) != (batch, n_raters):
            raise MultiRaterDataError(
                f"rater_mask must have shape (B, R) = ({batch}, {n_raters}), got {tuple(mask.shape)}; "
                "fix: pass one bool per rater channel of label for every image."
            )
        mask = mask != 0
    no_rater = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if no_rater:
        raise MultiRaterDataError(
            f"image(s) {no_rater} of the batch have no rater present (rater_mask all False); "
            "fix: drop images without any annotation from the evaluation data list."
        )

    pred = pred.reshape(pred.shape[0], pred.shape[1], -1)
    label = label.reshape(batch, n_raters, -1) != 0
    if not pred.is_floating_point():
        pred = pred.float()
    return pred, label, mask


# ----------------------------------------------------------------------------- pairwise overlaps


def _gram(pred_bin: torch.Tensor, label_bin: torch.Tensor) -> torch.Tensor:
    """Intersections of every pair in [P; A] as one batched matrix product, (B, S+R, S+R) float64."""
    stacked = torch.cat([pred_bin, label_bin], dim=1)
    # bool -> float for the matmul; float32 sums of 0/1 stay exact below 2**24 voxels
    dtype = torch.float32 if stacked.shape[-1] < _EXACT_FLOAT32_COUNT else torch.float64
    stacked = stacked.to(dtype)
    return torch.bmm(stacked, stacked.transpose(1, 2)).double()


def _iou(inter: torch.Tensor, area_x: torch.Tensor, area_y: torch.Tensor, compat: str) -> torch.Tensor:
    """IoU of every (x, y) pair from intersections (..., X, Y) and areas (..., X), (..., Y)."""
    union = area_x[..., :, None] + area_y[..., None, :] - inter
    if compat == "dpersona":
        return inter / (union + _EPS)
    # union 0 means both masks are empty: they agree perfectly
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def _dice(inter: torch.Tensor, area_x: torch.Tensor, area_y: torch.Tensor, compat: str) -> torch.Tensor:
    """Dice of every (x, y) pair from intersections (..., X, Y) and areas (..., X), (..., Y)."""
    denom = area_x[..., :, None] + area_y[..., None, :]
    if compat == "dpersona":
        return (2 * inter + _EPS) / (denom + _EPS)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(inter))


def _within_set_mean(dist: torch.Tensor, present: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Mean of a (B, n, n) distance matrix over pairs of present elements; 0 where there is no pair."""
    weight = present[:, :, None] & present[:, None, :]
    if unbiased:  # distinct pairs only
        weight = weight & ~torch.eye(dist.shape[-1], dtype=torch.bool, device=dist.device)
    weight = weight.double()
    n_pairs = weight.sum(dim=(1, 2))
    total = (dist * weight).sum(dim=(1, 2))
    return torch.where(n_pairs > 0, total / n_pairs.clamp_min(1), torch.zeros_like(total))


def _ged_terms(
    gram: torch.Tensor, n_samples: int, mask: torch.Tensor, compat: str, unbiased: bool
) -> dict[str, torch.Tensor]:
    area = torch.diagonal(gram, dim1=1, dim2=2)
    dist = 1.0 - _iou(gram, area, area, compat)
    s = n_samples
    all_samples = torch.ones(mask.shape[0], s, dtype=torch.bool, device=mask.device)
    weight = mask[:, None, :].double()
    d_pa = (dist[:, :s, s:] * weight).sum(dim=(1, 2)) / (s * weight.sum(dim=(1, 2)))
    d_pp = _within_set_mean(dist[:, :s, :s], all_samples, unbiased)
    d_aa = _within_set_mean(dist[:, s:, s:], mask, unbiased)
    return {"ged": 2 * d_pa - d_pp - d_aa, "d_pa": d_pa, "d_pp": d_pp, "d_aa": d_aa}


def _dice_matrix_from_gram(gram: torch.Tensor, n_samples: int, mask: torch.Tensor, compat: str) -> torch.Tensor:
    area = torch.diagonal(gram, dim1=1, dim2=2)
    s = n_samples
    matrix = _dice(gram[:, :s, s:], area[:, :s], area[:, s:], compat)
    return matrix.masked_fill(~mask[:, None, :], float("nan"))


def _soft_dice(
    pred: torch.Tensor, label_bin: torch.Tensor, mask: torch.Tensor, thresholds: Sequence[float], compat: str
) -> torch.Tensor:
    if len(thresholds) == 0:
        raise ValueError("thresholds must hold at least one value, e.g. (0.1, 0.3, 0.5, 0.7, 0.9).")
    # mean of the predicted probabilities (not the binarized masks), as the published code does
    pred_soft = pred.sum(dim=1, dtype=torch.float64) / pred.shape[1]
    weight = mask.double()
    label_soft = torch.einsum("brn,br->bn", label_bin.double(), weight) / weight.sum(dim=1, keepdim=True)
    t = torch.as_tensor(thresholds, dtype=torch.float64, device=pred.device)[None, :, None]
    pred_t = pred_soft[:, None, :] > t  # (B, T, N)
    label_t = label_soft[:, None, :] > t
    inter = (pred_t & label_t).sum(dim=-1).double()
    denom = (pred_t.sum(dim=-1) + label_t.sum(dim=-1)).double()
    if compat == "dpersona":
        dice = (2 * inter + _EPS) / (denom + _EPS)
    else:
        dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(inter))
    return dice.mean(dim=1)


# ----------------------------------------------------------------------------- Dice-matrix reducers


def _as_matrix(matrix: Any) -> tuple[torch.Tensor, bool]:
    m = convert_to_tensor(matrix, dtype=torch.float64, track_meta=False, wrap_sequence=True)
    if m.ndim not in (2, 3):
        raise ValueError(f"Dice matrix must be (S, R) or (B, S, R), got shape {tuple(m.shape)}.")
    return (m[None], True) if m.ndim == 2 else (m, False)


def dice_max_from_matrix(matrix: Any) -> torch.Tensor:
    """Dice_max of a Dice matrix (S, R) or (B, S, R): mean over raters of the best sample's Dice.

    Columns that are entirely NaN (missing raters) are left out of the mean. Returns a 0-dim
    tensor for one (S, R) matrix, else (B,).
    """
    m, single = _as_matrix(matrix)
    best = m.amax(dim=1)  # (B, R); NaN for a missing rater's column
    out = torch.nanmean(best, dim=1)
    return out[0] if single else out


def _match_one(m: np.ndarray) -> float:
    present = ~np.isnan(m).all(axis=0)
    m = m[:, present]
    if np.isnan(m).any():
        raise ValueError("Dice matrix has NaN entries outside whole missing-rater columns.")
    n_samples, n_raters = m.shape
    if n_raters == 0 or n_samples < n_raters:
        return float("nan")  # no one-to-one assignment of every rater exists
    rows, cols = linear_sum_assignment(m, maximize=True)
    return float(m[rows, cols].mean())


def dice_match_from_matrix(matrix: Any) -> torch.Tensor:
    """Dice_match of a Dice matrix (S, R) or (B, S, R): one-to-one sample-rater matching.

    Each present rater is assigned a distinct sample so that the total Dice is maximal
    (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``); the result is the mean of the
    matched Dice over raters. All-NaN columns (missing raters) are dropped first. When there are
    fewer samples than present raters (S < R) no such assignment exists and the result is NaN.
    """
    m, single = _as_matrix(matrix)
    values = [_match_one(x) for x in m.detach().cpu().numpy()]  # tiny (S, R) problem per image
    out = torch.tensor(values, dtype=torch.float64, device=m.device)
    return out[0] if single else out


def dice_per_rater_from_matrix(matrix: Any) -> torch.Tensor:
    """Identity per-rater Dice from a Dice matrix (B, S, R): ``M[:, r, r]`` when S == R.

    With S == 1 (a single-output model) the one prediction is compared with every rater,
    ``M[:, 0, :]``. Other S raise ValueError: a generation method's samples have no rater identity.
    """
    m = convert_to_tensor(matrix, dtype=torch.float64, track_meta=False, wrap_sequence=True)
    if m.ndim != 3:
        raise ValueError(f"Dice matrix must be (B, S, R), got shape {tuple(m.shape)}.")
    n_samples, n_raters = m.shape[1:]
    if n_samples == 1:
        return m[:, 0, :]
    if n_samples == n_raters:
        return torch.diagonal(m, dim1=1, dim2=2)
    raise ValueError(
        f"per-rater Dice needs one output per rater (S == R) or a single output (S == 1), got S={n_samples}, "
        f"R={n_raters}; for S sampled outputs use dice_max / dice_match instead."
    )


# ----------------------------------------------------------------------------- public functions


def generalized_energy_distance(
    pred: Any,
    label: Any,
    rater_mask: Any | None = None,
    return_terms: bool = False,
    compat: str = "default",
    unbiased: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Generalized energy distance ``2 E[d(P,A)] - E[d(P,P')] - E[d(A,A')]`` with ``d = 1 - IoU``.

    Args:
        pred: (B, S, *spatial) probabilities or binary masks; foreground is ``pred > 0.5``.
        label: (B, R, *spatial) binary rater masks.
        rater_mask: (B, R) bool, True where the rater annotated the image; None = all present.
        return_terms: also return the three expectations.
        compat: ``"default"`` or ``"dpersona"`` (see the module docstring).
        unbiased: within-set means over distinct pairs only (default: all pairs, see the module docstring).

    Returns:
        (B,) float64 GED, or a dict with ``ged``, ``d_pa``, ``d_pp``, ``d_aa`` (each (B,)).
    """
    _check_compat(compat, unbiased)
    pred, label, mask = prepare_sets(pred, label, rater_mask)
    terms = _ged_terms(_gram(pred > 0.5, label), pred.shape[1], mask, compat, unbiased)
    return terms if return_terms else terms["ged"]


def soft_dice(
    pred: Any,
    label: Any,
    rater_mask: Any | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    compat: str = "default",
) -> torch.Tensor:
    """Dice_soft: mean over ``thresholds`` of ``Dice(mean(P) > t, mean(A) > t)``, (B,).

    ``mean(P)`` averages the predicted probabilities over the S outputs (not the binarized masks);
    ``mean(A)`` averages the present raters' masks. Computed in float64.
    """
    _check_compat(compat)
    pred, label, mask = prepare_sets(pred, label, rater_mask)
    return _soft_dice(pred, label, mask, thresholds, compat)


def dice_matrix(pred: Any, label: Any, rater_mask: Any | None = None, compat: str = "default") -> torch.Tensor:
    """Dice matrix ``M[b, s, r] = Dice(P_s, A_r)``, (B, S, R); a missing rater's column is NaN."""
    _check_compat(compat)
    pred, label, mask = prepare_sets(pred, label, rater_mask)
    return _dice_matrix_from_gram(_gram(pred > 0.5, label), pred.shape[1], mask, compat)


def dice_max(pred: Any, label: Any, rater_mask: Any | None = None, compat: str = "default") -> torch.Tensor:
    """Dice_max, (B,): mean over present raters of the best Dice any sample reaches (D-Persona Fig. 3)."""
    return dice_max_from_matrix(dice_matrix(pred, label, rater_mask, compat))


def dice_match(pred: Any, label: Any, rater_mask: Any | None = None, compat: str = "default") -> torch.Tensor:
    """Dice_match, (B,): mean matched Dice under the best one-to-one assignment; NaN where S < R present."""
    return dice_match_from_matrix(dice_matrix(pred, label, rater_mask, compat))


def dice_per_rater(pred: Any, label: Any, rater_mask: Any | None = None, compat: str = "default") -> torch.Tensor:
    """Dice_Ai, (B, R): output i against rater i (S == R), or the single output against every rater (S == 1).

    Missing raters are NaN. Other S raise ValueError.
    """
    return dice_per_rater_from_matrix(dice_matrix(pred, label, rater_mask, compat))


def compute_set_metrics(
    pred: Any,
    label: Any,
    rater_mask: Any | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    compat: str = "default",
    unbiased: bool = False,
) -> dict[str, torch.Tensor]:
    """Every set metric at once, sharing one pairwise-overlap product per image.

    Returns a dict of (B,) float64 tensors ``ged``, ``d_pa``, ``d_pp``, ``d_aa``, ``dice_soft``,
    ``dice_max``, ``dice_match``, and ``dice_per_rater`` (B, R). ``dice_per_rater`` is all NaN
    when S is neither 1 nor R (sampled outputs have no rater identity: "N/A" in the papers' tables).
    ``unbiased`` applies to the GED terms as in :py:func:`generalized_energy_distance`.
    """
    _check_compat(compat, unbiased)
    pred, label, mask = prepare_sets(pred, label, rater_mask)
    n_samples, n_raters = pred.shape[1], label.shape[1]
    gram = _gram(pred > 0.5, label)
    out = _ged_terms(gram, n_samples, mask, compat, unbiased)
    out["dice_soft"] = _soft_dice(pred, label, mask, thresholds, compat)
    matrix = _dice_matrix_from_gram(gram, n_samples, mask, compat)
    out["dice_max"] = dice_max_from_matrix(matrix)
    out["dice_match"] = dice_match_from_matrix(matrix)
    if n_samples in (1, n_raters):
        out["dice_per_rater"] = dice_per_rater_from_matrix(matrix)
    else:
        shape = (pred.shape[0], n_raters)
        out["dice_per_rater"] = torch.full(shape, float("nan"), dtype=torch.float64, device=pred.device)
    return out
