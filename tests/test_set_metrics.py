"""Set-to-set metrics: hand-computed values, conventions, missing raters, 3D, errors, naive reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from multirater_monai.utils.errors import MultiRaterDataError
from multirater_monai.metrics import (
    DiceMatchMetric,
    DiceMaxMetric,
    DiceMeanMetric,
    DicePerRaterMetric,
    GeneralizedEnergyDistanceMetric,
    SetMetricsTable,
    SoftDiceMetric,
    compute_set_metrics,
    dice_match,
    dice_match_from_matrix,
    dice_matrix,
    dice_max,
    dice_max_from_matrix,
    dice_per_rater,
    generalized_energy_distance,
    nan_aware_reduction,
    soft_dice,
)

# ---------------------------------------------------------------------------------------------
# The hand example: 2x2 images, flattened row-major to 4 voxels.
#   P1 = [1, 1, 0, 0]   (probabilities [1, .75, .25, 0])
#   P2 = [1, 0, 0, 0]   (probabilities [.75, .25, .375, 0])
#   A1 = [1, 1, 0, 0]
#   A2 = [0, 1, 1, 0]
# Intersection / union / IoU / d = 1 - IoU:
#   P1,A1: 2/2 -> d 0        P1,A2: 1/3 -> d 2/3
#   P2,A1: 1/2 -> d 1/2      P2,A2: 0/3 -> d 1
#   P1,P2: 1/2 -> d 1/2      A1,A2: 1/3 -> d 2/3
# d_pa = (0 + 2/3 + 1/2 + 1) / 4 = 13/24
# all ordered pairs (default and compat; self-pairs have d 0 here, no empty masks):
#   d_pp = 2 * 1/2 / 4 = 1/4,  d_aa = 2 * 2/3 / 4 = 1/3,  GED = 13/12 - 1/4 - 1/3 = 1/2
# unbiased (distinct pairs): d_pp = 1/2, d_aa = 2/3, GED = 13/12 - 1/2 - 2/3 = -1/12
# Dice matrix M[s, r]: P1A1 = 4/4 = 1, P1A2 = 2/4 = 1/2, P2A1 = 2/3, P2A2 = 0
#   Dice_max = (max(1, 2/3) + max(1/2, 0)) / 2 = 3/4
#   Dice_match: P1-A1 & P2-A2 = 1 + 0 = 1;  P1-A2 & P2-A1 = 1/2 + 2/3 = 7/6 (better) -> 7/12
#   per rater (identity): [M11, M22] = [1, 0]
# Dice_soft: mean(P) = [.875, .5, .3125, 0], mean(A) = [.5, 1, .5, 0]
#   t=.1: P>t [1,1,1,0], A>t [1,1,1,0] -> 1;   t=.3: same -> 1 (.3125 > .3)
#   t=.5: P [1,0,0,0], A [0,1,0,0] -> 0;       t=.7: same -> 0;  t=.9: P empty, A [0,1,0,0] -> 0
#   Dice_soft = 2/5. (Averaging the binarized masks instead, mean = [1, .5, 0, 0], would give
#   t=.1,.3: [1,1,0,0] vs [1,1,1,0] -> 4/5 each; others 0 -> 8/25 = 0.32.)
# ---------------------------------------------------------------------------------------------

P_PROB = torch.tensor([[1.0, 0.75, 0.25, 0.0], [0.75, 0.25, 0.375, 0.0]]).reshape(1, 2, 2, 2)
A_HAND = torch.tensor([[1.0, 1, 0, 0], [0, 1, 1, 0]]).reshape(1, 2, 2, 2)


@pytest.mark.parametrize("compat", ["default", "dpersona"])
def test_hand_example_ged(compat):
    terms = generalized_energy_distance(P_PROB, A_HAND, return_terms=True, compat=compat)
    tol = 1e-7 if compat == "dpersona" else 1e-12  # compat adds 1e-8 to every union
    assert terms["d_pa"].item() == pytest.approx(13 / 24, abs=tol)
    assert terms["d_pp"].item() == pytest.approx(1 / 4, abs=tol)
    assert terms["d_aa"].item() == pytest.approx(1 / 3, abs=tol)
    assert terms["ged"].item() == pytest.approx(1 / 2, abs=tol)
    assert generalized_energy_distance(P_PROB, A_HAND, compat=compat).shape == (1,)


def test_hand_example_ged_unbiased():
    terms = generalized_energy_distance(P_PROB, A_HAND, return_terms=True, unbiased=True)
    assert terms["d_pp"].item() == pytest.approx(1 / 2)
    assert terms["d_aa"].item() == pytest.approx(2 / 3)
    assert terms["ged"].item() == pytest.approx(-1 / 12)


def test_ged_of_identical_sets_is_zero():
    # P == A == {A1, A2}: d_pa = d_pp = d_aa = 2 * 2/3 / 4 = 1/3 -> GED 0 (all pairs);
    # with distinct pairs only, d_pp = d_aa = 2/3 and GED = 2/3 - 4/3 = -2/3.
    assert generalized_energy_distance(A_HAND, A_HAND).item() == pytest.approx(0.0, abs=1e-12)
    assert generalized_energy_distance(A_HAND, A_HAND, unbiased=True).item() == pytest.approx(-2 / 3)


@pytest.mark.parametrize("compat", ["default", "dpersona"])
def test_hand_example_dice(compat):
    tol = 1e-7
    m = dice_matrix(P_PROB, A_HAND, compat=compat)
    assert m.shape == (1, 2, 2)
    np.testing.assert_allclose(m[0].numpy(), [[1, 1 / 2], [2 / 3, 0]], atol=tol)
    assert dice_max(P_PROB, A_HAND, compat=compat).item() == pytest.approx(3 / 4, abs=tol)
    assert dice_match(P_PROB, A_HAND, compat=compat).item() == pytest.approx(7 / 12, abs=tol)
    np.testing.assert_allclose(dice_per_rater(P_PROB, A_HAND, compat=compat)[0].numpy(), [1, 0], atol=tol)
    assert soft_dice(P_PROB, A_HAND, compat=compat).item() == pytest.approx(2 / 5, abs=tol)


def test_soft_dice_uses_probabilities_not_binarized_masks():
    assert soft_dice(P_PROB, A_HAND).item() == pytest.approx(0.4)
    assert soft_dice((P_PROB > 0.5).float(), A_HAND).item() == pytest.approx(0.32)  # see header comment
    # one threshold only: t = .3 -> 1 with probabilities
    assert soft_dice(P_PROB, A_HAND, thresholds=(0.3,)).item() == pytest.approx(1.0)


def test_single_output_compared_with_every_rater():
    # S == 1: P1 against A1, A2 -> [1, 1/2] (D-Persona Table 1, U-Net rows)
    np.testing.assert_allclose(dice_per_rater(P_PROB[:, :1], A_HAND)[0].numpy(), [1, 0.5])
    with pytest.raises(ValueError, match="S == R"):
        dice_per_rater(torch.cat([P_PROB, P_PROB], 1), A_HAND)  # S=4, R=2


# ---------------------------------------------------------------------------------------------
# Empty masks: P1 = empty, P2 = [1,0,0,0]; A1 = empty.
# default (IoU(empty, empty) = 1): d(P1,A1) = 0, d(P2,A1) = 1 -> d_pa = 1/2
#   d_pp = (d11 0 + d12 1 + d21 1 + d22 0) / 4 = 1/2;  d_aa = d(A1,A1) = 0  -> GED = 1 - 1/2 = 1/2
# dpersona (IoU = I / (U + 1e-8), empty-empty IoU 0, distance 1): d(P1,A1) = 1, d(P2,A1) = 1 -> d_pa = 1
#   d_pp = (1 + 1 + 1 + d22 = 1e-8/(1+1e-8) ~ 0) / 4 = 3/4;  d_aa = d(A1,A1) = 1 -> GED = 2 - 3/4 - 1 = 1/4
# Dice: default P1A1 = 1 (empty-empty), P2A1 = 0/1 = 0; compat (0+1e-8)/(0+1e-8) = 1, 1e-8/(1+1e-8) ~ 0
#   Dice_max = 1, Dice_match (S=2 >= R=1) = 1.  Dice_soft: mean(P) = [.5,0,0,0] vs mean(A) = 0:
#   t=.1,.3: [1,0,0,0] vs empty -> 0; t>=.5: both empty -> 1 -> (0+0+1+1+1)/5 = 3/5 (both modes)
# ---------------------------------------------------------------------------------------------
P_EMPTY = torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0]]).reshape(1, 2, 2, 2)
A_EMPTY = torch.zeros(1, 1, 2, 2)


@pytest.mark.parametrize(
    "compat, expected",
    [("default", (1 / 2, 1 / 2, 0.0, 1 / 2)), ("dpersona", (1.0, 3 / 4, 1.0, 1 / 4))],
)
def test_empty_masks(compat, expected):
    terms = generalized_energy_distance(P_EMPTY, A_EMPTY, return_terms=True, compat=compat)
    got = tuple(terms[k].item() for k in ("d_pa", "d_pp", "d_aa", "ged"))
    np.testing.assert_allclose(got, expected, atol=1e-7)
    np.testing.assert_allclose(dice_matrix(P_EMPTY, A_EMPTY, compat=compat)[0, :, 0].numpy(), [1, 0], atol=1e-7)
    assert dice_max(P_EMPTY, A_EMPTY, compat=compat).item() == pytest.approx(1.0)
    assert dice_match(P_EMPTY, A_EMPTY, compat=compat).item() == pytest.approx(1.0)
    assert soft_dice(P_EMPTY, A_EMPTY, compat=compat).item() == pytest.approx(3 / 5)


def test_missing_rater_is_dropped():
    # add a third rater A3 = [0,0,0,1] who did NOT annotate: every value equals the R=2 example
    label = torch.cat([A_HAND, torch.tensor([0.0, 0, 0, 1]).reshape(1, 1, 2, 2)], dim=1)
    mask = torch.tensor([[True, True, False]])
    terms = generalized_energy_distance(P_PROB, label, mask, return_terms=True)
    assert terms["ged"].item() == pytest.approx(1 / 2)
    assert terms["d_aa"].item() == pytest.approx(1 / 3)
    m = dice_matrix(P_PROB, label, mask)
    assert torch.isnan(m[0, :, 2]).all()
    assert dice_max(P_PROB, label, mask).item() == pytest.approx(3 / 4)
    assert dice_match(P_PROB, label, mask).item() == pytest.approx(7 / 12)
    assert soft_dice(P_PROB, label, mask).item() == pytest.approx(2 / 5)
    # present, A3 changes the answer: mean(A) becomes [1/3, 2/3, 1/3, 1/3]
    assert soft_dice(P_PROB, label).item() != pytest.approx(2 / 5)
    # one rater only (A1): d_aa = 0 (a single self-pair of distance 0); d_pa = (0 + 1/2) / 2 = 1/4;
    # GED = 1/2 - 1/4 - 0 = 1/4
    one = torch.tensor([[True, False, False]])
    assert generalized_energy_distance(P_PROB, label, one).item() == pytest.approx(1 / 4)
    # unbiased: d_pp = 1/2 (the one distinct pair), no distinct rater pair -> d_aa = 0; GED = 1/2 - 1/2 = 0
    assert generalized_energy_distance(P_PROB, label, one, unbiased=True).item() == pytest.approx(0.0, abs=1e-12)


def test_per_rater_nan_for_missing_and_s_less_than_r_match_is_nan():
    # S == R == 3 with rater 3 missing
    label = torch.cat([A_HAND, torch.zeros(1, 1, 2, 2)], dim=1)
    pred = torch.cat([P_PROB, torch.zeros(1, 1, 2, 2)], dim=1)
    d = dice_per_rater(pred, label, torch.tensor([[True, True, False]]))
    np.testing.assert_allclose(d[0, :2].numpy(), [1, 0])
    assert torch.isnan(d[0, 2])
    # S=1 < R=2 present: no one-to-one assignment
    assert torch.isnan(dice_match(P_PROB[:, :1], A_HAND))


def test_3d_input():
    # the hand example stacked twice along depth: every intersection and area doubles,
    # so every ratio (IoU, Dice) and thus every metric is unchanged
    pred = torch.stack([P_PROB, P_PROB], dim=-1)  # (1, 2, 2, 2, 2)
    label = torch.stack([A_HAND, A_HAND], dim=-1)
    out = compute_set_metrics(pred, label)
    assert out["ged"].item() == pytest.approx(1 / 2)
    assert out["dice_max"].item() == pytest.approx(3 / 4)
    assert out["dice_match"].item() == pytest.approx(7 / 12)
    assert out["dice_soft"].item() == pytest.approx(2 / 5)
    np.testing.assert_allclose(out["dice_per_rater"][0].numpy(), [1, 0])


# ---------------------------------------------------------------------------------------------
# D-Persona Fig. 3: 6 sampled predictions (rows) x 4 annotations (columns)
# column maxima 0.8094, 0.8994, 0.8624, 0.8973 -> Dice_max = 3.4685 / 4 = 0.867125
# matching rows (5, 0, 2, 4) -> 0.8094 + 0.8994 + 0.8500 + 0.8973 = 3.4561 -> Dice_match = 0.864025
# ---------------------------------------------------------------------------------------------
FIG3 = [
    [0.5532, 0.8994, 0.8624, 0.6338],
    [0.5552, 0.6694, 0.5210, 0.7575],
    [0.7135, 0.8476, 0.8500, 0.5928],
    [0.5556, 0.5949, 0.6366, 0.7836],
    [0.5099, 0.6071, 0.5953, 0.8973],
    [0.8094, 0.8452, 0.5741, 0.7156],
]


def test_fig3_dice_matrix_reducers():
    assert dice_max_from_matrix(FIG3).item() == pytest.approx(0.867125, abs=1e-12)
    assert dice_match_from_matrix(FIG3).item() == pytest.approx(0.864025, abs=1e-12)
    # batched, with a missing fifth rater (NaN column) in the second image: same values
    m = torch.tensor(FIG3, dtype=torch.float64)
    with_missing = torch.cat([m, torch.full((6, 1), float("nan"))], dim=1)
    batch = torch.stack([torch.cat([m, torch.zeros(6, 1)], 1), with_missing])
    np.testing.assert_allclose(dice_max_from_matrix(batch)[1].item(), 0.867125)
    np.testing.assert_allclose(dice_match_from_matrix(batch)[1].item(), 0.864025)
    # first image: a present fifth rater with Dice 0 everywhere -> (3.4685 + 0) / 5
    assert dice_max_from_matrix(batch)[0].item() == pytest.approx(3.4685 / 5)
    # 4 samples < 6 raters (the transpose): no one-to-one assignment
    assert torch.isnan(dice_match_from_matrix(m.T))


# ---------------------------------------------------------------------------------------------
# Naive per-pair reference (numpy booleans, one pair at a time), written independently here.
# ---------------------------------------------------------------------------------------------


def _iou_ref(x, y, compat):
    inter, union = np.logical_and(x, y).sum(), np.logical_or(x, y).sum()
    if compat == "dpersona":
        return inter / (union + 1e-8)
    return 1.0 if union == 0 else inter / union


def _dice_ref(x, y, compat):
    inter, total = np.logical_and(x, y).sum(), x.sum() + y.sum()
    if compat == "dpersona":
        return (2 * inter + 1e-8) / (total + 1e-8)
    return 1.0 if total == 0 else 2 * inter / total


def _reference(pred, label, mask, compat, unbiased=False, thresholds=(0.1, 0.3, 0.5, 0.7, 0.9)):
    out = {k: [] for k in ("ged", "d_pa", "d_pp", "d_aa", "dice_soft", "dice_max", "dice_match")}
    for p_prob, lab, m in zip(pred.numpy(), label.numpy(), mask.numpy()):
        ps = [x > 0.5 for x in p_prob]
        as_ = [x > 0.5 for x, keep in zip(lab, m) if keep]
        d = lambda x, y: 1 - _iou_ref(x, y, compat)  # noqa: E731
        d_pa = np.mean([d(p, a) for p in ps for a in as_])
        pairs_p = [(i, j) for i in range(len(ps)) for j in range(len(ps)) if not (unbiased and i == j)]
        pairs_a = [(i, j) for i in range(len(as_)) for j in range(len(as_)) if not (unbiased and i == j)]
        d_pp = np.mean([d(ps[i], ps[j]) for i, j in pairs_p]) if pairs_p else 0.0
        d_aa = np.mean([d(as_[i], as_[j]) for i, j in pairs_a]) if pairs_a else 0.0
        out["d_pa"].append(d_pa)
        out["d_pp"].append(d_pp)
        out["d_aa"].append(d_aa)
        out["ged"].append(2 * d_pa - d_pp - d_aa)
        p_soft, a_soft = p_prob.astype(np.float64).mean(0), np.mean(as_, axis=0)
        out["dice_soft"].append(np.mean([_dice_ref(p_soft > t, a_soft > t, compat) for t in thresholds]))
        mat = np.array([[_dice_ref(p, a, compat) for a in as_] for p in ps])
        out["dice_max"].append(mat.max(0).mean())
        # brute-force one-to-one matching (small S, R)
        best = max(
            np.mean([mat[s, r] for r, s in enumerate(rows)])
            for rows in itertools.permutations(range(len(ps)), len(as_))
        )
        out["dice_match"].append(best)
    return {k: np.array(v) for k, v in out.items()}


def _random_batch(seed, spatial=(9, 7)):
    g = torch.Generator().manual_seed(seed)
    b, s, r = 4, 5, 3
    pred = torch.rand(b, s, *spatial, generator=g) ** 3  # mostly background, some foreground
    label = (torch.rand(b, r, *spatial, generator=g) > 0.8).float()
    pred[0, 1] = 0.0  # an empty prediction
    pred[1] = 0.0  # an image with only empty predictions
    label[1, 0] = 0.0  # an empty annotation
    label[2] = 0.0  # an image where every rater drew nothing
    mask = torch.ones(b, r, dtype=torch.bool)
    mask[3, 1] = False  # a missing rater
    return pred, label, mask


@pytest.mark.parametrize("compat, unbiased", [("default", False), ("default", True), ("dpersona", False)])
@pytest.mark.parametrize("spatial", [(9, 7), (5, 4, 3)])
def test_vectorised_matches_naive_reference(compat, unbiased, spatial):
    pred, label, mask = _random_batch(0, spatial)
    got = compute_set_metrics(pred, label, mask, compat=compat, unbiased=unbiased)
    ref = _reference(pred, label, mask, compat, unbiased)
    for key, expected in ref.items():
        np.testing.assert_allclose(got[key].numpy(), expected, atol=1e-12, rtol=0, err_msg=key)


def test_default_ged_never_negative():
    # all-pairs GED is an energy distance with a negative-type distance: >= 0 on any input
    for seed in range(5):
        pred, label, mask = _random_batch(seed)
        assert (generalized_energy_distance(pred, label, mask) >= -1e-12).all()


def test_hungarian_matches_brute_force_on_random_matrices():
    g = np.random.default_rng(0)
    for _ in range(20):
        m = g.random((5, 3))
        brute = max(np.mean([m[s, r] for r, s in enumerate(rows)]) for rows in itertools.permutations(range(5), 3))
        assert dice_match_from_matrix(m).item() == pytest.approx(brute)
        r, c = linear_sum_assignment(m, maximize=True)  # sanity of the reference itself
        assert m[r, c].mean() == pytest.approx(brute)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, label, mask, match",
    [
        (torch.rand(2, 3, 4, 4), torch.ones(2, 3, 4), None, "same number of dims"),
        (torch.rand(2, 3, 4, 4), torch.ones(3, 3, 4, 4), None, "batch size differs"),
        (torch.rand(2, 3, 4, 4), torch.ones(2, 3, 4, 5), None, "spatial shape differs"),
        (torch.full((1, 2, 4, 4), float("nan")), torch.ones(1, 3, 4, 4), None, "pred contains NaN"),
        (torch.rand(1, 2, 4, 4) * 5 - 2, torch.ones(1, 3, 4, 4), None, "apply a sigmoid"),
        (torch.rand(1, 2, 4, 4), torch.full((1, 3, 4, 4), 0.5), None, "label must be binary"),
        (torch.rand(1, 2, 4, 4), torch.ones(1, 3, 4, 4), torch.ones(1, 2, dtype=torch.bool), "rater_mask must have"),
        (torch.rand(2, 2, 4, 4), torch.ones(2, 3, 4, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]), r"image\(s\) \[1\]"),
        (torch.rand(2, 4), torch.ones(2, 4), None, "at least one spatial dim"),
    ],
)
def test_bad_input_errors(pred, label, mask, match):
    with pytest.raises(MultiRaterDataError, match=match):
        compute_set_metrics(pred, label, mask)


def test_bad_option_errors():
    with pytest.raises(ValueError, match="compat must be one of"):
        generalized_energy_distance(P_PROB, A_HAND, compat="paper")
    with pytest.raises(ValueError, match="self-pairs"):
        generalized_energy_distance(P_PROB, A_HAND, compat="dpersona", unbiased=True)
    with pytest.raises(ValueError, match=r"\(S, R\) or \(B, S, R\)"):
        dice_max_from_matrix([1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# Cumulative metrics
# ---------------------------------------------------------------------------------------------


def _two_images():
    """Image 1: the hand example. Image 2: P = [X, Y], A = [X, (missing)], X = [1,1,0,0], Y = [0,0,1,1].

    Image 2 by hand (rater 2 missing): d(X,X) = 0, d(Y,X) = 1 -> d_pa = 1/2; d_pp = (0+1+1+0)/4 = 1/2;
    d_aa = 0 -> GED = 1/2. Dice matrix [[1, nan], [0, nan]] -> Dice_max = Dice_match = 1; per rater
    [1, nan]. Dice_soft: mean(P) = .5 everywhere vs X: t=.1,.3 -> 2*2/(4+2) = 2/3; t>=.5 -> 0 -> 4/15.
    """
    x, y = torch.tensor([1.0, 1, 0, 0]), torch.tensor([0.0, 0, 1, 1])
    pred = torch.cat([P_PROB, torch.stack([x, y]).reshape(1, 2, 2, 2)])
    label = torch.cat([A_HAND, torch.stack([x, torch.zeros(4)]).reshape(1, 2, 2, 2)])
    mask = torch.tensor([[True, True], [True, False]])
    return pred, label, mask


# means over the two images: GED (1/2 + 1/2)/2 = 1/2; d_pa (13/24 + 1/2)/2 = 25/48;
# Dice_soft (2/5 + 4/15)/2 = 1/3; Dice_max (3/4 + 1)/2 = 7/8; Dice_match (7/12 + 1)/2 = 19/24;
# per rater: A1 (1 + 1)/2 = 1, A2 = 0 (image 1 only) -> Dice_mean = (1 + 0)/2 = 1/2
EXPECTED_TABLE = {
    "ged": 1 / 2,
    "d_pa": 25 / 48,
    "dice_soft": 1 / 3,
    "dice_max": 7 / 8,
    "dice_match": 19 / 24,
    "dice_A1": 1.0,
    "dice_A2": 0.0,
    "dice_mean": 1 / 2,
}


@pytest.mark.parametrize("as_list", [False, True])
def test_cumulative_metrics(as_list):
    pred, label, mask = _two_images()
    if as_list:  # decollated evaluator output: lists of channel-first tensors and (R,) masks
        pred, label, mask = list(pred), list(label), list(mask)
    metrics = {
        "ged": GeneralizedEnergyDistanceMetric(),
        "dice_soft": SoftDiceMetric(),
        "dice_max": DiceMaxMetric(),
        "dice_match": DiceMatchMetric(),
        "dice_mean": DiceMeanMetric(),
    }
    for m in metrics.values():
        m(pred, label, rater_mask=mask)
    for key, m in metrics.items():
        assert m.aggregate().item() == pytest.approx(EXPECTED_TABLE[key]), key
    assert metrics["ged"].aggregate_terms()["d_pa"].item() == pytest.approx(25 / 48)

    per_rater = DicePerRaterMetric()
    per_rater(pred, label, rater_mask=mask)
    np.testing.assert_allclose(per_rater.aggregate().numpy(), [1.0, 0.0])
    per_image = DicePerRaterMetric()(pred, label, rater_mask=mask)  # the per-image (B, R) values
    assert per_image[0, 0].item() == pytest.approx(1.0) and torch.isnan(per_image[1, 1])

    table = SetMetricsTable(rater_names=["A1", "A2"])
    table(pred, label, rater_mask=mask)
    summary = table.aggregate()
    assert list(summary) == [
        "ged", "d_pa", "d_pp", "d_aa", "dice_soft", "dice_max", "dice_match", "dice_A1", "dice_A2", "dice_mean"
    ]  # fmt: skip
    for key, value in EXPECTED_TABLE.items():
        assert summary[key] == pytest.approx(value), key
    rows = table.per_image()
    assert rows[1]["dice_mean"] == pytest.approx(1.0)  # image 2: only rater 1, Dice 1
    assert rows[0]["dice_match"] == pytest.approx(7 / 12)


def test_cumulative_accumulates_over_calls_and_resets():
    pred, label, mask = _two_images()
    m = DiceMaxMetric()
    m(pred[:1], label[:1], rater_mask=mask[:1])  # 3/4
    m(pred[1:], label[1:], rater_mask=mask[1:])  # 1
    assert m.aggregate().item() == pytest.approx(7 / 8)
    assert m.aggregate(reduction="sum").item() == pytest.approx(7 / 4)
    m.reset()
    m(pred[:1], label[:1], rater_mask=mask[:1])
    assert m.aggregate().item() == pytest.approx(3 / 4)


def test_generation_method_table_has_nan_per_rater_and_nan_aware_reduction():
    pred, label, mask = _two_images()
    table = SetMetricsTable()
    table(torch.cat([pred, pred, pred], dim=1), label, rater_mask=mask)  # S = 6 samples, R = 2
    summary = table.aggregate()
    assert np.isnan(summary["dice_A1"]) and np.isnan(summary["dice_mean"])  # "N/A", not 0
    # a mean over nothing is NaN; NaN entries are skipped
    f, not_nans = nan_aware_reduction(torch.tensor([[1.0, float("nan")], [3.0, float("nan")]]), "mean_batch")
    np.testing.assert_array_equal(f[:1].numpy(), [2.0])
    assert torch.isnan(f[1]) and not_nans.tolist() == [2.0, 0.0]


def test_cumulative_list_length_mismatch():
    pred, label, mask = _two_images()
    with pytest.raises(ValueError, match="one \\(R,\\) mask per image"):
        DiceMaxMetric()(list(pred), list(label), rater_mask=[mask[0]])
