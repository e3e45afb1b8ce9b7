"""AVAP's agreement label (eq. 2) on hand-made masks, and the calibrated map read back from logits."""

from __future__ import annotations

import pytest
import torch

from multirater_monai.data import (
    AgreementLabel,
    AgreementLabeld,
    AgreementProbabilityd,
    agreement_label,
    agreement_probability,
)
from multirater_monai.utils.errors import MultiRaterDataError

# three raters on a 2x3 image: pixel (0,0) nobody, (0,1) rater 1, (0,2) raters 1+2, (1,0) all three,
# (1,1) raters 2+3, (1,2) rater 3
R1 = [[0, 1, 1], [1, 0, 0]]
R2 = [[0, 0, 1], [1, 1, 0]]
R3 = [[0, 0, 0], [1, 1, 1]]
COUNTS = [[0, 1, 2], [3, 2, 1]]


def test_counts_raters_per_pixel():
    out = AgreementLabel()(torch.tensor([R1, R2, R3], dtype=torch.float32))
    assert out.dtype == torch.long and out.shape == (1, 2, 3)
    assert out[0].tolist() == COUNTS


def test_two_structures_structure_major():
    # structure 0 = the three raters above; structure 1 ("core") = only (1, 0) for raters 1 and 3
    core = [[0, 0, 0], [1, 0, 0]]
    none = [[0, 0, 0], [0, 0, 0]]
    stack = torch.tensor([R1, R2, R3, core, none, core], dtype=torch.float32)
    out = AgreementLabel(num_structures=2)(stack)
    assert out[0].tolist() == COUNTS
    assert out[1].tolist() == [[0, 0, 0], [2, 0, 0]]


def test_missing_rater_is_rescaled_to_the_fraction_of_present_raters():
    # rater 3 missing (its channel is zero): 1 of 2 present raters -> round(3 * 1/2) = 2 (half to even),
    # 2 of 2 -> 3
    stack = torch.tensor([R1, R2, [[0] * 3, [0] * 3]], dtype=torch.float32)
    out = AgreementLabel()(stack, torch.tensor([True, True, False]))
    assert out[0].tolist() == [[0, 2, 3], [3, 2, 0]]
    with pytest.raises(MultiRaterDataError, match="fewer than R=3 raters.*missing='rescale'"):
        AgreementLabel(missing="error")(stack, torch.tensor([True, True, False]))


def test_batched_function_and_errors():
    stack = torch.tensor([[R1, R2, R3], [R3, R3, R3]], dtype=torch.float32)
    out = agreement_label(stack)
    assert out.shape == (2, 1, 2, 3)
    assert out[1, 0].tolist() == [[0, 0, 0], [3, 3, 3]]
    with pytest.raises(MultiRaterDataError, match="not num_raters x num_structures for num_structures=2"):
        agreement_label(stack, num_structures=2)
    with pytest.raises(MultiRaterDataError, match="must be binary"):
        agreement_label(stack * 0.5)
    with pytest.raises(MultiRaterDataError, match="no annotating rater"):
        agreement_label(stack, torch.tensor([[True, True, True], [False, False, False]]))
    with pytest.raises(MultiRaterDataError, match=r"rater_mask has shape \(2, 2\)"):
        agreement_label(stack, torch.ones(2, 2, dtype=torch.bool))


def test_dict_transform_keeps_the_rater_stack():
    data = {"label": torch.tensor([R1, R2, R3], dtype=torch.float32), "rater_mask": torch.ones(3, dtype=torch.bool)}
    out = AgreementLabeld(keys="label")(data)
    assert out["agreement_label"][0].tolist() == COUNTS
    assert out["label"] is data["label"]


def test_calibrated_map_from_logits():
    # R = 2 raters, one pixel per structure, K = 2: class logits favour 1 (of 2) and 2 (of 2)
    logits = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 5.0]]).reshape(1, 6, 1, 1)
    assert agreement_probability(logits, num_raters=2, num_structures=2).flatten().tolist() == [0.5, 1.0]
    # expectation: softmax over (0, 3, 0) is symmetric around class 1 -> exactly 1/2
    expected = agreement_probability(logits, num_raters=2, num_structures=2, calibration="expectation").flatten()
    assert expected[0].item() == pytest.approx(0.5)
    assert 0.98 < expected[1].item() < 1.0
    out = AgreementProbabilityd(keys="pred", num_raters=2, num_structures=2)({"pred": logits[0]})
    assert out["calibrated"].shape == (2, 1, 1)
    with pytest.raises(MultiRaterDataError, match="K x \\(R \\+ 1\\) = 1 x 3"):
        agreement_probability(logits, num_raters=2, num_structures=1)


def test_median_calibration_known_answer():
    # R = 4 raters (classes 0..4), two pixels with hand-made softmax probabilities (logits = log p):
    # a: p = (.30, .05, .10, .15, .40): argmax class 4 -> 1.0; P(M>=1..4) = .70, .65, .55, .40, so the
    #    median class is 3 -> 0.75; expectation (.05 + 2*.10 + 3*.15 + 4*.40) / 4 = 2.30 / 4 = 0.575
    # b: p = (.45, .15, .15, .15, .10): argmax class 0 -> 0.0; P(M>=1..4) = .55, .40, .25, .10 -> median
    #    class 1 -> 0.25; expectation (.15 + .30 + .45 + .40) / 4 = 0.325
    p = torch.tensor([[0.30, 0.05, 0.10, 0.15, 0.40], [0.45, 0.15, 0.15, 0.15, 0.10]], dtype=torch.float64)
    logits = p.log().T.reshape(1, 5, 1, 2)
    assert agreement_probability(logits, num_raters=4).flatten().tolist() == [1.0, 0.0]
    assert agreement_probability(logits, num_raters=4, calibration="median").flatten().tolist() == [0.75, 0.25]
    assert agreement_probability(logits, num_raters=4, calibration="expectation").flatten().tolist() == pytest.approx(
        [0.575, 0.325]
    )
    out = AgreementProbabilityd(keys="pred", num_raters=4, calibration="median")({"pred": logits[0]})
    assert out["calibrated"].flatten().tolist() == [0.75, 0.25]
    with pytest.raises(ValueError, match="calibration must be one of"):
        agreement_probability(logits, num_raters=4, calibration="mode")
