"""The tab and padl bundles end to end through MONAI's own bundle commands on synthetic data.

Known answers: evaluate.json gives four rows, in order: personalized (one output per rater: Dice_A1..A4, whose
mean is Dice_mean), the consensus (global) mean alone (one prediction given to every rater: d_pp = 0, Dice_Ai each rater against
that one mask), and 10 and
50 consensus samples (no rater identity, samples that differ: d_pp > 0); GED equals 2 d_pa - d_pp - d_aa.
Inference writes R binary personalized masks, the calibrated (consensus) probability in [0, 1], S binary
samples and the agreement map in [0, 1]. PADL's optimiser takes the weight decay of the config. With two
structures (``--num_structures 2``) evaluate.json gives the per-structure 'Mean Voting' / 'Average' table for
the personalized and the consensus settings, and inference writes K x R personalized masks, K calibrated maps,
K x S samples and K agreement maps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .bundle_runner import SYNTHETIC, TINY, bundle_ok, overrides_dict
from .conftest import REPO_ROOT

NAMES = {"tab": ("TAB", "consensus"), "padl": ("PADL", "global")}


def _configs(name: str) -> Path:
    return REPO_ROOT / "bundles" / name / "configs"


def test_padl_optimiser_takes_the_configured_weight_decay():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(_configs("padl") / "train.json"))
    parser.update({**overrides_dict(TINY["padl"]), "device": "$torch.device('cpu')"})
    optimizer = parser.get_parsed_content("train#optimizer")
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.003, 1e-05)]
    network = parser.get_parsed_content("network")
    assert sum(p.numel() for p in optimizer.param_groups[0]["params"]) == sum(p.numel() for p in network.parameters())


@pytest.fixture(scope="module", params=sorted(NAMES))
def trained(request, tmp_path_factory, synthetic_dir) -> tuple[str, Path]:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    bundle_ok(["run", "training", "--config_file", str(_configs(name) / "train.json"), "--bundle_root", str(root),
               "--dataset_dir", str(synthetic_dir), *SYNTHETIC, *TINY[name], "--epochs", "1",
               "--val_interval", "1", "--batch_size", "8"])
    return name, root


@pytest.mark.slow
def test_evaluate_gives_personalized_consensus_and_sample_rows(trained, synthetic_dir):
    name, root = trained
    label, kind = NAMES[name]
    configs = _configs(name)
    bundle_ok(["run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
               "--bundle_root", str(root), "--dataset_dir", str(synthetic_dir), *SYNTHETIC, *TINY[name]])
    rows = json.loads((root / "eval" / "metrics.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == [
        f"{label} (personalized)", f"{label} ({kind} mean)", f"{label} ({kind} Gaussian, 10 samples)",
        f"{label} ({kind} Gaussian, 50 samples)"]
    personalized, mean, *samples = rows
    for row in rows:
        assert row["ged"] == pytest.approx(2 * row["d_pa"] - row["d_pp"] - row["d_aa"], abs=1e-6)
    assert personalized["dice_mean"] == pytest.approx(sum(personalized[f"dice_A{i}"] for i in range(1, 5)) / 4,
                                                      abs=1e-4)
    # one prediction for every rater (a rater-blind row): no spread, Dice_Ai of the same mask against each rater
    assert mean["d_pp"] == 0.0 and mean["dice_match"] is None
    assert mean["dice_mean"] == pytest.approx(sum(mean[f"dice_A{i}"] for i in range(1, 5)) / 4, abs=1e-4)
    for row in samples:
        assert row["dice_A1"] is None and row["d_pp"] > 0.0


@pytest.mark.slow
def test_inference_writes_personalized_calibrated_samples_and_agreement(trained, synthetic_dir, tmp_path):
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
    personalized = nib.load(out_dir / f"{stem}_personalized.nii.gz").get_fdata()
    calibrated = nib.load(out_dir / f"{stem}_calibrated.nii.gz").get_fdata()
    samples = nib.load(out_dir / f"{stem}_samples.nii.gz").get_fdata()
    agreement = nib.load(out_dir / f"{stem}_agreement.nii.gz").get_fdata()
    assert personalized.size == 64 * 64 * 4 and set(personalized.ravel().tolist()) <= {0.0, 1.0}
    assert samples.size == 64 * 64 * 6 and set(samples.ravel().tolist()) <= {0.0, 1.0}
    for prob in (calibrated, agreement):
        assert prob.size == 64 * 64 and 0.0 <= prob.min() and prob.max() <= 1.0
    assert len(set(calibrated.ravel().tolist())) > 2  # a probability map, not a mask


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NAMES))
def test_two_structures_train_evaluate_and_infer_per_structure(name, tmp_path):
    import nibabel as nib

    from multirater_monai.data import prepare_synthetic

    label, kind = NAMES[name]
    configs = _configs(name)
    data = tmp_path / "data"
    prepare_synthetic(data, num_samples=40, num_raters=4, seed=5, size=32, num_structures=2)
    root = tmp_path / "bundle"
    two = [*SYNTHETIC, *TINY[name], "--num_structures", "2", "--dataset_dir", str(data), "--bundle_root", str(root)]
    bundle_ok(["run", "training", "--config_file", str(configs / "train.json"), *two, "--epochs", "2",
               "--val_interval", "2", "--batch_size", "8"])
    bundle_ok(["run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']", *two])
    rows = json.loads((root / "eval" / "metrics.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == [f"{label} (personalized)", f"{label} ({kind} mean)"]
    personalized, mean = rows
    for structure in ("lesion", "core"):  # the datalist's structure names
        assert {f"{structure}_mean_voting", f"{structure}_average", f"{structure}_ged"} <= set(personalized)
        # the consensus mean is given to every rater of its structure: no spread among the "raters"
        assert mean[f"{structure}_d_pp"] == 0.0
    images = tmp_path / "images"
    images.mkdir()
    src = sorted((data / "images").glob("*.nii.gz"))[0]
    (images / src.name).write_bytes(src.read_bytes())
    out_dir = tmp_path / "pred"
    bundle_ok(["run", "--config_file", str(configs / "inference.json"), "--bundle_root", str(root), "--input_dir",
               str(images), "--output_dir", str(out_dir), "--intensity_range", "[0,1]", "--num_structures", "2",
               *TINY[name]])
    stem = src.name[: -len(".nii.gz")]
    sizes = {key: nib.load(out_dir / f"{stem}_{key}.nii.gz").get_fdata().size
             for key in ("personalized", "calibrated", "samples", "agreement")}
    assert sizes == {"personalized": 32 * 32 * 8, "calibrated": 32 * 32 * 2, "samples": 32 * 32 * 12,
                     "agreement": 32 * 32 * 2}
