"""The pionono bundle: the optimiser's two learning rates from the config, and end to end through MONAI's own
bundle commands on synthetic data.

Known answers: train.json's optimiser holds the network at ``learning_rate`` and the rater Gaussians at
``latent_learning_rate``; evaluate.json gives three rows (personalized: one output per rater, so Dice_A1..A4;
mixture samples: no rater identity, Dice_Ai N/A, and samples that differ, d_pp > 0); GED equals its terms;
the checkpoint holds one Gaussian per rater; inference writes R binary personalized masks, S binary samples
and the agreement map in [0, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .bundle_runner import SYNTHETIC, TINY, bundle_ok, overrides_dict
from .conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "bundles" / "pionono" / "configs"


def test_the_optimiser_gives_the_rater_gaussians_the_latent_learning_rate():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({**overrides_dict(TINY["pionono"]), "device": "$torch.device('cpu')"})
    optimizer = parser.get_parsed_content("train#optimizer")
    network = parser.get_parsed_content("network")
    assert [g["lr"] for g in optimizer.param_groups] == [parser["learning_rate"], parser["latent_learning_rate"]]
    assert parser["latent_learning_rate"] > parser["learning_rate"]
    latent = optimizer.param_groups[1]["params"]
    assert len(latent) == 2 and latent[0] is network.latent_mean and latent[1] is network.latent_log_sigma
    counted = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert counted == sum(p.numel() for p in network.parameters())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dir) -> Path:
    root = tmp_path_factory.mktemp("pionono")
    bundle_ok(["run", "training", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(root),
               "--dataset_dir", str(synthetic_dir), *SYNTHETIC, *TINY["pionono"], "--epochs", "4",
               "--val_interval", "2", "--batch_size", "8"])
    return root


@pytest.mark.slow
def test_evaluate_gives_the_personalized_row_and_the_mixture_rows(trained, synthetic_dir):
    out = bundle_ok(["run", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']",
                     "--bundle_root", str(trained), "--dataset_dir", str(synthetic_dir), *SYNTHETIC, *TINY["pionono"]])
    assert "| Pionono (personalized) |" in out
    rows = json.loads((trained / "eval" / "metrics.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == [
        "Pionono (personalized)", "Pionono (mixture, 10 samples)", "Pionono (mixture, 50 samples)"]
    personalized, *mixtures = rows
    for row in rows:
        assert row["ged"] == pytest.approx(2 * row["d_pa"] - row["d_pp"] - row["d_aa"], abs=1e-6)
        assert 0.3 < row["dice_soft"] <= 1.0
    assert all(personalized[f"dice_A{i}"] is not None for i in range(1, 5))
    assert personalized["dice_mean"] == pytest.approx(sum(personalized[f"dice_A{i}"] for i in range(1, 5)) / 4,
                                                      abs=1e-4)
    for row in mixtures:
        assert row["dice_A1"] is None and row["dice_mean"] is None
        assert row["d_pp"] > 0.0
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert state["latent_mean"].shape == (4, 8) and state["latent_log_sigma"].shape == (4, 8)


@pytest.mark.slow
def test_inference_writes_personalized_masks_samples_and_the_agreement_map(trained, synthetic_dir, tmp_path):
    import nibabel as nib

    images = tmp_path / "images"
    images.mkdir()
    src = sorted((synthetic_dir / "images").glob("*.nii.gz"))[0]
    (images / src.name).write_bytes(src.read_bytes())
    out_dir = tmp_path / "pred"
    bundle_ok(["run", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(trained),
               "--input_dir", str(images), "--output_dir", str(out_dir), "--intensity_range", "[0,1]",
               *TINY["pionono"]])
    stem = src.name[: -len(".nii.gz")]
    personalized = nib.load(out_dir / f"{stem}_personalized.nii.gz").get_fdata()
    samples = nib.load(out_dir / f"{stem}_samples.nii.gz").get_fdata()
    agreement = nib.load(out_dir / f"{stem}_agreement.nii.gz").get_fdata()
    assert personalized.size == 64 * 64 * 4 and set(personalized.ravel().tolist()) <= {0.0, 1.0}
    assert samples.size == 64 * 64 * 6 and set(samples.ravel().tolist()) <= {0.0, 1.0}
    assert agreement.size == 64 * 64 and 0.0 <= agreement.min() and agreement.max() <= 1.0
