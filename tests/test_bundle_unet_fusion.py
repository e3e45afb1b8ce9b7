"""End to end: the unet_fusion bundle through MONAI's own bundle commands, on synthetic data.

Trains two per-rater U-Nets (the conservative rater A1 and the liberal rater A3 of the synthetic
generator), evaluates both with evaluate.json and runs inference.json. The known answer: each model
matches the rater it was trained on better than the other model does, and predicts a larger area
when trained on the liberal rater. (Export, verify_net_in_out, the inference layouts and the
missing-checkpoint message are checked for every bundle in test_bundles_common.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .bundle_runner import SYNTHETIC, TINY
from .bundle_runner import bundle as _bundle
from .bundle_runner import bundle_ok as _run_ok
from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow

BUNDLE = REPO_ROOT / "bundles" / "unet_fusion"
CONFIGS = BUNDLE / "configs"
SYNTHETIC_OVERRIDES = [*SYNTHETIC, *TINY["unet_fusion"]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dir) -> dict[int, Path]:
    """bundle_root per trained rater index (0 = conservative, 2 = liberal)."""
    roots = {}
    for rater in (0, 2):
        root = tmp_path_factory.mktemp(f"bundle_rater{rater}")
        _run_ok(["run", "training", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(root),
                 "--dataset_dir", str(synthetic_dir), *SYNTHETIC_OVERRIDES, "--fusion", "rater",
                 "--fusion_rater", str(rater), "--epochs", "12", "--val_interval", "4", "--batch_size", "8",
                 "--learning_rate", "0.003"])
        assert (root / "models" / "model.pt").is_file()
        roots[rater] = root
    return roots


@pytest.fixture(scope="module")
def evaluated(trained, synthetic_dir) -> dict[int, dict]:
    tables = {}
    for rater, root in trained.items():
        out = _run_ok(["run", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']",
                       "--bundle_root", str(root), "--dataset_dir", str(synthetic_dir), *SYNTHETIC_OVERRIDES])
        assert "| U-Net (majority) |" in out, "evaluate.json should print the metric table, one row"
        doc = json.loads((root / "eval" / "metrics.json").read_text())
        assert (root / "eval" / "metrics.csv").is_file()
        tables[rater] = {"summary": doc["rows"][0], "per_image": doc["per_image"]["U-Net (majority)"]}
    return tables


def test_evaluate_reports_full_metric_table(evaluated):
    summary = evaluated[0]["summary"]
    for key in ("ged", "d_pa", "d_pp", "d_aa", "dice_soft", "dice_max", "dice_match",
                "dice_A1", "dice_A2", "dice_A3", "dice_A4", "dice_mean"):
        assert key in summary
    # one output per image (S = 1): no pair of distinct predictions, so d_pp = 0; Dice_match needs S >= R
    assert summary["d_pp"] == pytest.approx(0.0, abs=1e-9)
    assert summary["dice_match"] is None  # NaN is saved as null
    assert len(evaluated[0]["per_image"]) == 18  # 15 % of 120 synthetic samples form the test split


def test_per_rater_models_learn_their_rater(evaluated):
    conservative, liberal = evaluated[0]["summary"], evaluated[2]["summary"]
    print("A1-trained", conservative, "\nA3-trained", liberal)
    # trained on A1 (p > 0.8) it matches A1 better than the A3-trained model does, and vice versa
    assert conservative["dice_A1"] > liberal["dice_A1"] + 0.05
    assert liberal["dice_A3"] > conservative["dice_A3"] + 0.05
    # and both models really segment: far above an empty prediction (Dice 0 on non-empty masks)
    assert conservative["dice_A1"] > 0.6 and liberal["dice_A3"] > 0.6


def test_inference_writes_nifti_masks(trained, synthetic_dir, tmp_path):
    import nibabel as nib

    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((synthetic_dir / "images").glob("*.nii.gz"))[:3]:
        (images / src.name).write_bytes(src.read_bytes())
    out_dir = tmp_path / "pred"
    _run_ok(["run", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(trained[2]),
             "--input_dir", str(images), "--output_dir", str(out_dir), "--intensity_range", "[0,1]", *TINY["unet_fusion"]])
    written = sorted(out_dir.glob("*_consensus.nii.gz"))
    assert [p.name.replace("_consensus", "") for p in written] == [p.name for p in sorted(images.glob("*.nii.gz"))]
    mask = nib.load(written[0]).get_fdata()
    assert mask.shape == (64, 64) and set(mask.ravel().tolist()) <= {0.0, 1.0} and mask.sum() > 0
    overlays = sorted(p.name for p in out_dir.glob("*_overlay.png"))
    assert overlays == [p.name.replace(".nii.gz", "_overlay.png") for p in sorted(images.glob("*.nii.gz"))]

def test_training_on_a_datalist_with_a_missing_rater_file_stops_before_training(tmp_path, synthetic_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    doc = json.loads((data / "datalist.json").read_text())
    victim = data / doc["training"][1]["label"][2]
    victim.unlink()
    proc = _bundle(["run", "training", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(tmp_path / "b"),
                    "--dataset_dir", str(data), *SYNTHETIC_OVERRIDES, "--epochs", "1"])
    assert proc.returncode != 0
    assert str(victim) in proc.stderr
    assert not (tmp_path / "b" / "models" / "model.pt").exists()
