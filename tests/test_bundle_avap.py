"""End to end: the avap bundle through MONAI's own bundle commands, on synthetic data.

One ``run training`` runs step 1 (backbone + AVM) and then step 2 (APM) from step 1's best checkpoint.
Known answers: step 2 changed the preference head and nothing else (every frozen tensor, BatchNorm
statistics included, is bit-identical to the step-1 checkpoint); evaluate.json gives 'Mean Voting',
'Average' and the set table of the R per-rater outputs, per structure on a two-structure set; the
per-rater masks follow the synthetic raters' styles (the liberal rater's mask is larger than the
conservative rater's); inference writes the calibrated map, R masks and an overlay per image; the
TorchScript export reproduces the checkpoint's outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .bundle_runner import bundle_ok, rater_areas, run_inference, two_structure_row
from .bundle_runner import stem as stem_of
from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CONFIGS = REPO_ROOT / "bundles" / "avap" / "configs"
TINY_NET = ["--backbone#channels", "[8,16,32]", "--backbone#feature_channels", "8",
            "--network_def#agreement_channels", "8"]
SYNTHETIC = ["--dataset_name", "synthetic", "--rank_raters_by_area", "False", "--intensity_range", "[0,1]", *TINY_NET]
TRAIN_CONFIGS = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']"
FAST = ["--val_interval", "3", "--batch_size", "8", "--learning_rate", "0.003", "--stage2_learning_rate", "0.01"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dir) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("avap")
    out = bundle_ok(["run", "training", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(root),
                     "--dataset_dir", str(synthetic_dir), *SYNTHETIC, "--epochs", "6", "--stage2_epochs", "4",
                     *FAST])
    return root, out


def test_training_runs_both_steps_and_step2_changes_only_the_preference_head(trained):
    root, out = trained
    assert "[stage 2] from" in out and "model_stage1.pt" in out
    assert "trainable parameters (preference_head), frozen: backbone, agreement_branches" in out
    step1 = torch.load(root / "models" / "model_stage1.pt", weights_only=True)
    step2 = torch.load(root / "models" / "model.pt", weights_only=True)
    assert step1.keys() == step2.keys()
    head = [k for k in step1 if k.startswith("preference_head.")]
    frozen = [k for k in step1 if not k.startswith("preference_head.")]
    assert head and any("running_mean" in k for k in frozen) and any(k.startswith("agreement_branches.") for k in frozen)
    assert [k for k in frozen if not torch.equal(step1[k], step2[k])] == []
    assert not torch.equal(step1["preference_head.controller.weight"], step2["preference_head.controller.weight"])


def test_evaluate_reports_mean_voting_average_and_the_set_table(trained, synthetic_dir):
    root, _ = trained
    out = bundle_ok(["run", "--config_file", TRAIN_CONFIGS, "--bundle_root", str(root),
                     "--dataset_dir", str(synthetic_dir), *SYNTHETIC])
    assert "| AVAP |" in out
    [row] = json.loads((root / "eval" / "metrics.json").read_text())["rows"]
    for key in ("mean_voting", "average", "ged", "d_pa", "d_pp", "d_aa", "dice_soft", "dice_max", "dice_match"):
        assert 0.0 <= row[key] <= 2.0
    assert row["dice_mean"] == pytest.approx(sum(row[f"dice_A{i}"] for i in range(1, 5)) / 4, abs=1e-6)
    assert row["mean_voting"] > 0.7 and row["dice_mean"] > 0.7  # it really segments
    assert row["d_pp"] > 0.0  # the per-rater outputs differ from each other


def test_inference_writes_calibrated_map_rater_masks_and_overlay(trained, synthetic_dir, tmp_path):
    import nibabel as nib

    root, _ = trained
    out_dir, sources = run_inference(CONFIGS, root, synthetic_dir, tmp_path, ["--intensity_range", "[0,1]", *TINY_NET])
    stem = stem_of(sources[0])
    calibrated = nib.load(out_dir / f"{stem}_calibrated.nii.gz").get_fdata().squeeze()
    assert calibrated.shape == (64, 64) and set((calibrated * 4).round(4).ravel().tolist()) <= {0, 1, 2, 3, 4}
    assert (out_dir / f"{stem}_overlay.png").is_file()
    # the synthetic raters' styles: A1 conservative (p > 0.8) < A3 liberal (p > 0.2), summed over images
    for src in sources:
        mask = nib.load(out_dir / f"{stem_of(src)}_personalized.nii.gz").get_fdata()
        assert mask.shape[:2] == (64, 64) and mask.shape[-1] == 4
    areas = rater_areas(out_dir, sources)  # also checks the masks are binary
    assert areas[2] > 1.3 * areas[0], f"per-rater areas A1..A4: {areas.tolist()}"

def test_two_structures_are_evaluated_per_structure(tmp_path):
    row = two_structure_row(CONFIGS, tmp_path, SYNTHETIC,
                            ["--epochs", "6", "--stage2_epochs", "1", *FAST, "--val_interval", "2", "--batch_size", "4"])
    for structure in ("lesion", "core"):  # the datalist's structure names
        assert {f"{structure}_mean_voting", f"{structure}_average", f"{structure}_ged", f"{structure}_dice_A4"} <= set(row)
    assert row["lesion_mean_voting"] > 0.5  # the AVM found the lesion in 42 steps
