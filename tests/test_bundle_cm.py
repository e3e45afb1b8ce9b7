"""End to end: the cm_global and cm_pixel bundles through MONAI's own bundle commands, on synthetic data.

Known answers: evaluate.json gives the two rows (per-rater outputs with p as the calibrated map, then p
for every rater: no spread between outputs, d_pp = 0, and the same soft Dice for 'Mean Voting' and
Dice_soft); GED equals its terms; the trained checkpoint's matrices are rows of probabilities; inference
writes p (float, in [0, 1]) and one binary mask per rater.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .bundle_runner import TINY, bundle_ok
from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SYNTHETIC = ["--dataset_name", "synthetic", "--rank_raters_by_area", "False", "--intensity_range", "[0,1]"]
TITLES = {"cm_global": "CM-Global", "cm_pixel": "CM-Pixel"}


def _configs(name: str) -> Path:
    return REPO_ROOT / "bundles" / name / "configs"


@pytest.fixture(scope="module", params=sorted(TITLES))
def trained(request, tmp_path_factory, synthetic_dir) -> tuple[str, Path]:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    bundle_ok(["run", "training", "--config_file", str(_configs(name) / "train.json"), "--bundle_root", str(root),
               "--dataset_dir", str(synthetic_dir), *SYNTHETIC, *TINY[name], "--epochs", "4", "--val_interval", "2",
               "--batch_size", "8"])
    return name, root


def test_evaluate_gives_the_personalized_row_and_the_true_label_row(trained, synthetic_dir):
    name, root = trained
    configs = _configs(name)
    out = bundle_ok(["run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
                     "--bundle_root", str(root), "--dataset_dir", str(synthetic_dir), *SYNTHETIC, *TINY[name]])
    title = TITLES[name]
    assert f"| {title} |" in out
    rows = json.loads((root / "eval" / "metrics.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == [title, f"{title} (true label p for every rater)"]
    personalized, truth = rows
    for row in rows:
        assert row["ged"] == pytest.approx(2 * row["d_pa"] - row["d_pp"] - row["d_aa"], abs=1e-6)
        assert 0.3 < row["average"] <= 1.0 and row["dice_A4"] is not None
    # p is the calibrated map of both rows; given to every rater it has no spread
    assert personalized["mean_voting"] == pytest.approx(truth["mean_voting"], abs=1e-6)
    assert truth["d_pp"] == 0.0 and truth["dice_soft"] == pytest.approx(truth["mean_voting"], abs=1e-6)
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    if name == "cm_global":
        matrices = torch.softmax(state["cm_logits"], dim=-1)
        assert matrices.shape == (1, 4, 2, 2) and torch.allclose(matrices.sum(-1), torch.ones(()))


def test_inference_writes_the_true_label_and_one_mask_per_rater(trained, synthetic_dir, tmp_path):
    import nibabel as nib

    name, root = trained
    images = tmp_path / "images"
    images.mkdir()
    src = sorted((synthetic_dir / "images").glob("*.nii.gz"))[0]
    (images / src.name).write_bytes(src.read_bytes())
    out_dir = tmp_path / "pred"
    bundle_ok(["run", "--config_file", str(_configs(name) / "inference.json"), "--bundle_root", str(root),
               "--input_dir", str(images), "--output_dir", str(out_dir), "--intensity_range", "[0,1]", *TINY[name]])
    stem = src.name[: -len(".nii.gz")]
    calibrated = nib.load(out_dir / f"{stem}_calibrated.nii.gz").get_fdata()
    personalized = nib.load(out_dir / f"{stem}_personalized.nii.gz").get_fdata()
    assert calibrated.size == 64 * 64 and 0.0 <= calibrated.min() and calibrated.max() <= 1.0
    assert personalized.size == 64 * 64 * 4 and set(personalized.ravel().tolist()) <= {0.0, 1.0}
