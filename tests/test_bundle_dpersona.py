"""End to end: the dpersona bundle through MONAI's own bundle commands, on synthetic data.

One ``run training`` runs Stage I and then Stage II from Stage I's best checkpoint. Known answers:
Stage II changed the projection heads and nothing else (every frozen tensor, BatchNorm statistics
included, is bit-identical to the Stage I checkpoint); evaluate.json gives the paper's rows
(Stage I with #10/#30/#50 samples, Stage II) where only Stage II has per-rater Dice and the samples
differ from each other (d_pp > 0); the personalized masks follow the synthetic raters' styles
(the liberal rater's mask is larger than the conservative rater's); inference writes R personalized
masks, S samples, the agreement map and an overlay per image; the TorchScript export reproduces the
checkpoint's outputs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from .bundle_runner import bundle, bundle_ok, rater_areas, run_inference
from .bundle_runner import stem as stem_of
from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CONFIGS = REPO_ROOT / "bundles" / "dpersona" / "configs"
TINY_NET = [
    "--backbone#channels", "[8,16,32]",
    "--backbone#feature_channels", "8",
    "--num_samples", "6",
    "--bank_size", "30",
]
SYNTHETIC = ["--dataset_name", "synthetic", "--rank_raters_by_area", "False", "--intensity_range", "[0,1]", *TINY_NET]
TRAIN_CONFIGS = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dir) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("dpersona")
    out = bundle_ok(["run", "training", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(root),
                     "--dataset_dir", str(synthetic_dir), *SYNTHETIC, "--epochs", "8", "--stage2_epochs", "6",
                     "--val_interval", "4", "--batch_size", "8", "--learning_rate", "0.003",
                     "--stage2_learning_rate", "0.01"])
    return root, out


@pytest.fixture(scope="module")
def evaluated(trained, synthetic_dir) -> list[dict]:
    root, _ = trained
    out = bundle_ok(["run", "--config_file", TRAIN_CONFIGS, "--bundle_root", str(root),
                     "--dataset_dir", str(synthetic_dir), *SYNTHETIC])
    assert "| D-Persona (Stage II) |" in out, "evaluate.json should print the metric table"
    with open(root / "eval" / "metrics.csv") as f:
        assert [row["setting"] for row in csv.DictReader(f)][-1] == "D-Persona (Stage II)"
    return json.loads((root / "eval" / "metrics.json").read_text())["rows"]


def test_training_runs_both_stages_and_keeps_both_checkpoints(trained):
    root, out = trained
    assert "[stage 2] from" in out
    assert "trainable parameters (rater_heads), frozen: backbone, prior, posterior, head" in out
    stage1 = torch.load(root / "models" / "model_stage1.pt", weights_only=True)
    stage2 = torch.load(root / "models" / "model.pt", weights_only=True)
    assert stage1.keys() == stage2.keys()
    heads = [k for k in stage1 if k.startswith("rater_heads.")]
    frozen = [k for k in stage1 if not k.startswith("rater_heads.")]
    assert heads and any("running_mean" in k for k in frozen)
    changed_frozen = [k for k in frozen if not torch.equal(stage1[k], stage2[k])]
    assert changed_frozen == [], f"Stage II changed frozen tensors: {changed_frozen[:5]}"
    assert all(not torch.equal(stage1[k], stage2[k]) for k in heads if k.endswith("weight"))


def test_evaluate_reports_the_papers_rows(evaluated):
    assert [r["setting"] for r in evaluated] == [
        "D-Persona (Stage I, 10 samples)", "D-Persona (Stage I, 30 samples)", "D-Persona (Stage I, 50 samples)", "D-Persona (Stage II)"]
    stage1, stage2 = evaluated[2], evaluated[3]
    for key in ("ged", "d_pa", "d_pp", "d_aa", "dice_soft", "dice_max", "dice_match"):
        assert 0.0 <= stage1[key] <= 2.0 and 0.0 <= stage2[key] <= 2.0
    assert stage1["d_pp"] > 0.0  # the prior samples differ from each other
    assert stage1["dice_A1"] is None and stage1["dice_mean"] is None  # no rater identity for samples
    assert all(stage2[f"dice_A{i}"] is not None for i in range(1, 5))
    assert stage2["dice_mean"] == pytest.approx(sum(stage2[f"dice_A{i}"] for i in range(1, 5)) / 4, abs=1e-6)
    assert stage2["dice_mean"] > 0.6  # it really segments


def test_inference_writes_personalized_samples_agreement_and_overlay(trained, synthetic_dir, tmp_path):
    import nibabel as nib

    root, _ = trained
    out_dir, sources = run_inference(CONFIGS, root, synthetic_dir, tmp_path, ["--intensity_range", "[0,1]", *TINY_NET])
    stem = stem_of(sources[0])
    personalized = nib.load(out_dir / f"{stem}_personalized.nii.gz").get_fdata()
    samples = nib.load(out_dir / f"{stem}_samples.nii.gz").get_fdata()
    agreement = nib.load(out_dir / f"{stem}_agreement.nii.gz").get_fdata()
    assert personalized.shape[:2] == (64, 64) and personalized.shape[-1] == 4  # channels last: A1..A4
    assert samples.shape[-1] == 6 and set(samples.ravel().tolist()) <= {0.0, 1.0}
    assert agreement.squeeze().shape == (64, 64)
    assert agreement.squeeze() == pytest.approx(samples.reshape(64, 64, 6).mean(-1))
    assert (out_dir / f"{stem}_overlay.png").is_file()
    # the synthetic raters' styles: A1 conservative (p > 0.8) < A3 liberal (p > 0.2), summed over images
    areas = rater_areas(out_dir, sources)
    assert areas[2] > 1.3 * areas[0], f"personalized areas A1..A4: {areas.tolist()}"

def test_evaluate_without_checkpoints_names_the_fix(tmp_path, synthetic_dir):
    proc = bundle(["run", "--config_file", TRAIN_CONFIGS, "--bundle_root", str(tmp_path),
                   "--dataset_dir", str(synthetic_dir), *SYNTHETIC])
    assert proc.returncode != 0
    assert f"checkpoint not found: {tmp_path}/models/model.pt" in proc.stderr
    assert "python -m monai.bundle run training" in proc.stderr
