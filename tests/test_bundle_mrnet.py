"""End to end: the mrnet bundle through MONAI's own bundle commands, on synthetic data.

Known answers: evaluate.json gives 'Mean Voting' (the equal-weight output vs the mean vote), 'Average' (the
one-hot outputs vs their raters) and the set table of the R per-rater outputs, GED equal to its terms and
Dice_mean the mean of Dice_A1..A4; per structure on a two-structure set; the checkpoint holds the three heads;
inference writes the calibrated map (probabilities), R binary masks in the raters' styles (the liberal
rater's larger than the conservative rater's) and S binary samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .bundle_runner import TINY, bundle_ok, rater_areas, run_inference, two_structure_row
from .bundle_runner import stem as stem_of
from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CONFIGS = REPO_ROOT / "bundles" / "mrnet" / "configs"
SYNTHETIC = ["--dataset_name", "synthetic", "--rank_raters_by_area", "False", "--intensity_range", "[0,1]",
             *TINY["mrnet"]]
TRAIN_CONFIGS = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']"
# the expertise vector needs some 130 steps to tell the raters apart (the consensus comes first): 12 epochs
FAST = ["--val_interval", "4", "--batch_size", "8", "--learning_rate", "0.01"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dir) -> Path:
    root = tmp_path_factory.mktemp("mrnet")
    bundle_ok(["run", "training", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(root),
               "--dataset_dir", str(synthetic_dir), *SYNTHETIC, "--epochs", "12", *FAST])
    return root


def test_evaluate_reports_mean_voting_average_and_the_set_table(trained, synthetic_dir):
    out = bundle_ok(["run", "--config_file", TRAIN_CONFIGS, "--bundle_root", str(trained),
                     "--dataset_dir", str(synthetic_dir), *SYNTHETIC])
    assert "| MR-Net |" in out
    [row] = json.loads((trained / "eval" / "metrics.json").read_text())["rows"]
    assert row["ged"] == pytest.approx(2 * row["d_pa"] - row["d_pp"] - row["d_aa"], abs=1e-6)
    assert row["dice_mean"] == pytest.approx(sum(row[f"dice_A{i}"] for i in range(1, 5)) / 4, abs=1e-6)
    assert row["average"] == pytest.approx(sum(row[f"average_A{i}"] for i in range(1, 5)) / 4, abs=1e-6)
    assert row["mean_voting"] > 0.7 and row["dice_mean"] > 0.7  # it really segments
    assert row["d_pp"] > 0.0  # the one-hot outputs differ from each other
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert {k.split(".")[0] for k in state} == {"backbone", "expertise_head", "reconstruction_head", "refinement_head"}
    assert state["expertise_head.combine.weight"].shape[1] == 8 + 4  # features + the R-long expertise vector


def test_inference_writes_calibrated_map_rater_masks_and_samples(trained, synthetic_dir, tmp_path):
    import nibabel as nib

    out_dir, sources = run_inference(CONFIGS, trained, synthetic_dir, tmp_path,
                                     ["--intensity_range", "[0,1]", *TINY["mrnet"]])
    stem = stem_of(sources[0])
    calibrated = nib.load(out_dir / f"{stem}_calibrated.nii.gz").get_fdata().squeeze()
    assert calibrated.shape == (64, 64) and 0.0 <= calibrated.min() and calibrated.max() <= 1.0
    assert len(set(calibrated.round(4).ravel().tolist())) > 2  # a probability map, not a mask
    samples = nib.load(out_dir / f"{stem}_samples.nii.gz").get_fdata()
    assert samples.shape == (64, 64, 6) and set(samples.ravel().tolist()) <= {0.0, 1.0}
    assert (out_dir / f"{stem}_overlay.png").is_file()
    # the synthetic raters' styles: A1 conservative (p > 0.8) < A3 liberal (p > 0.2), summed over images
    areas = rater_areas(out_dir, sources)  # also checks the masks are binary
    assert areas[2] > 1.3 * areas[0], f"per-rater areas A1..A4: {areas.tolist()}"


def test_two_structures_are_evaluated_per_structure(tmp_path):
    row = two_structure_row(CONFIGS, tmp_path, SYNTHETIC,
                            ["--epochs", "6", *FAST, "--val_interval", "2", "--batch_size", "4"])
    for structure in ("lesion", "core"):  # the datalist's structure names
        assert {f"{structure}_mean_voting", f"{structure}_average", f"{structure}_ged", f"{structure}_dice_A4"} <= set(row)
    assert row["lesion_mean_voting"] > 0.5  # found the lesion in 42 steps
