"""Rater fusion on hand-made masks whose fused result is worked out by hand."""

import pytest
import torch
from monai.data import MetaTensor

from multirater_monai.data import FuseRaters, FuseRatersd, MultiRaterDataError


@pytest.fixture
def four_raters():
    """Four raters on a 1x6 image; rater 2 is missing, and its (nonsense) content must be ignored."""
    stack = torch.tensor([
        [1, 1, 1, 0, 0, 0],  # r0
        [1, 1, 0, 0, 0, 0],  # r1
        [1, 1, 1, 1, 1, 1],  # r2 (missing)
        [1, 0, 1, 1, 0, 0],  # r3
    ], dtype=torch.float32).reshape(4, 1, 6)
    mask = torch.tensor([True, True, False, True])
    return stack, mask


# votes of the 3 present raters per pixel: [3, 2, 2, 1, 0, 0]
EXPECTED = {
    "majority": [1, 1, 1, 0, 0, 0],  # 2 * votes > 3  <=>  votes >= 2
    "mean": [1, 2 / 3, 2 / 3, 1 / 3, 0, 0],
    "intersection": [1, 0, 0, 0, 0, 0],
    "union": [1, 1, 1, 1, 0, 0],
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_fusion_counts_only_present_raters(four_raters, method):
    stack, mask = four_raters
    fused = FuseRaters(method)(stack, mask)
    assert fused.shape == (1, 1, 6)
    assert torch.allclose(fused.reshape(-1), torch.tensor(EXPECTED[method], dtype=torch.float32))


def test_majority_tie_is_background():
    # 4 present raters, pixel 0 has 2 votes (a tie) -> background; pixel 1 has 3 votes -> foreground
    stack = torch.tensor([[1, 1], [1, 1], [0, 1], [0, 0]], dtype=torch.float32).reshape(4, 1, 2)
    assert FuseRaters("majority")(stack).reshape(-1).tolist() == [0.0, 1.0]


def test_rater_k_and_missing_rater_error(four_raters):
    stack, mask = four_raters
    assert FuseRaters("rater", rater_index=3)(stack, mask).reshape(-1).tolist() == [1, 0, 1, 1, 0, 0]
    named = MetaTensor(stack, meta={"filename_or_obj": "/data/case7_r1.nii.gz"})
    with pytest.raises(MultiRaterDataError, match=r"rater 2 is missing for /data/case7_r1\.nii\.gz \(present raters: \[0, 1, 3\]\)"):
        FuseRaters("rater", rater_index=2)(named, mask)
    with pytest.raises(MultiRaterDataError, match="rater 9 does not exist"):
        FuseRaters("rater", rater_index=9)(stack, mask)
    with pytest.raises(MultiRaterDataError, match="no present rater"):
        FuseRaters("union")(stack, torch.zeros(4, dtype=torch.bool))


def test_random_picks_present_raters_only_and_is_seeded(four_raters):
    stack, mask = four_raters
    # each rater has a distinct mask, so the output tells which one was drawn
    def draws(seed):
        fuser = FuseRaters("random").set_random_state(seed)
        outputs = [fuser(stack, mask)[0] for _ in range(60)]
        return [next(r for r in range(4) if torch.equal(out, stack[r])) for out in outputs]

    picked = draws(0)
    assert set(picked) == {0, 1, 3}  # never the missing rater 2; all present ones over 60 draws
    assert picked == draws(0)


def _square(top, left, size=6, n=16):
    m = torch.zeros(1, n, n)
    m[0, top : top + size, left : left + size] = 1
    return m


def test_staple_on_cases_with_known_answers():
    a = _square(3, 3)
    # three identical raters: STAPLE must return that mask
    assert torch.equal(FuseRaters("staple")(torch.cat([a, a, a])), a)
    # two agree, one outlier (a shifted square): STAPLE follows the agreeing pair, as majority does
    outlier = _square(8, 8)
    stack = torch.cat([a, outlier, a])
    staple = FuseRaters("staple")(stack)
    assert torch.equal(staple, a)
    assert torch.equal(staple, FuseRaters("majority")(stack))
    probs = FuseRaters("staple", staple_probabilities=True)(stack)
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0
    assert float(probs[a.bool()].min()) > 0.5 and float(probs[~a.bool()].max()) < 0.5
    # a missing rater is left out: with the outlier missing, only the pair counts
    assert torch.equal(FuseRaters("staple")(stack, torch.tensor([True, False, True])), a)
    # degenerate inputs: one present rater is returned; all-empty raters give an empty mask
    assert torch.equal(FuseRaters("staple")(stack, torch.tensor([False, True, False])), outlier)
    assert not FuseRaters("staple")(torch.zeros(3, 16, 16)).any()


def test_fuse_ratersd_output_key_keeps_stack_and_meta(four_raters):
    stack, mask = four_raters
    stack = MetaTensor(stack, meta={"filename_or_obj": "x.nii.gz"})
    d = FuseRatersd(method="majority", output_key="consensus")({"label": stack, "rater_mask": mask})
    assert d["label"] is stack
    assert d["consensus"].reshape(-1).tolist() == EXPECTED["majority"]
    assert isinstance(d["consensus"], MetaTensor) and d["consensus"].meta["filename_or_obj"] == "x.nii.gz"
    rnd = FuseRatersd(method="random").set_random_state(0)
    out = rnd({"label": stack, "rater_mask": mask})["label"][0]
    assert any(torch.equal(out, stack[r]) for r in (0, 1, 3))
    with pytest.raises(ValueError, match="unknown fusion method"):
        FuseRaters("median")
