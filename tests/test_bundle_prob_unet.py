"""End to end: the prob_unet bundle through MONAI's own bundle commands, on synthetic data.

Known answers: evaluate.json gives one row per sample count (10, 30, 50), the 50 samples spread at
least half as much as the raters do (d_pp > d_aa / 2: a collapsed latent fails this), the rows have
no per-rater Dice (a sampling method has no rater identity); inference writes S samples and their
agreement map (the mean of the samples).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .bundle_runner import bundle_ok
from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CONFIGS = REPO_ROOT / "bundles" / "prob_unet" / "configs"
TINY_NET = ["--backbone#channels", "[8,16,32]", "--backbone#feature_channels", "8", "--num_samples", "5"]
SYNTHETIC = ["--dataset_name", "synthetic", "--rank_raters_by_area", "False", "--intensity_range", "[0,1]", *TINY_NET]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dir) -> Path:
    root = tmp_path_factory.mktemp("prob_unet")
    bundle_ok(["run", "training", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(root),
               "--dataset_dir", str(synthetic_dir), *SYNTHETIC, "--epochs", "6", "--val_interval", "3",
               "--batch_size", "8", "--learning_rate", "0.003"])
    return root


def test_evaluate_one_row_per_sample_count(trained, synthetic_dir):
    out = bundle_ok(["run", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']",
                     "--bundle_root", str(trained), "--dataset_dir", str(synthetic_dir), *SYNTHETIC])
    assert "| Prob. U-Net (50 samples) |" in out
    rows = json.loads((trained / "eval" / "metrics.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == [f"Prob. U-Net ({n} samples)" for n in (10, 30, 50)]
    for row in rows:
        assert row["d_pp"] > 0.0 and row["dice_A1"] is None and 0.0 < row["dice_soft"] <= 1.0
        assert row["ged"] == pytest.approx(2 * row["d_pa"] - row["d_pp"] - row["d_aa"], abs=1e-6)
    # the samples spread like the raters (measured: d_pp 0.46 against d_aa 0.38 at 50 samples); with the
    # posterior on the whole rater stack and a Dice reconstruction the latent collapsed (d_pp near 0)
    assert rows[2]["d_pp"] > 0.5 * rows[2]["d_aa"], rows[2]


def test_inference_writes_samples_and_their_agreement(trained, synthetic_dir, tmp_path):
    import nibabel as nib

    images = tmp_path / "images"
    images.mkdir()
    src = sorted((synthetic_dir / "images").glob("*.nii.gz"))[0]
    (images / src.name).write_bytes(src.read_bytes())
    out_dir = tmp_path / "pred"
    bundle_ok(["run", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(trained),
               "--input_dir", str(images), "--output_dir", str(out_dir), "--intensity_range", "[0,1]", *TINY_NET])
    stem = src.name[: -len(".nii.gz")]
    samples = nib.load(out_dir / f"{stem}_samples.nii.gz").get_fdata().reshape(64, 64, 5)
    agreement = nib.load(out_dir / f"{stem}_agreement.nii.gz").get_fdata().reshape(64, 64)
    assert set(samples.ravel().tolist()) <= {0.0, 1.0} and samples.sum() > 0
    assert agreement == pytest.approx(samples.mean(-1))
    assert (out_dir / f"{stem}_overlay.png").is_file()
