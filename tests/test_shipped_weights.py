"""The weights shipped with every bundle (issue 15): present, small, scoring what the docs record, and
usable without training, from any folder, and without MONAI (TorchScript + torch, numpy, nibabel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .bundle_runner import bundle_ok
from .conftest import BUNDLES, REPO_ROOT

pytestmark = pytest.mark.slow

PLAIN_SCRIPT = REPO_ROOT / "scripts" / "plain_torch_inference.py"


def _models(name: str) -> Path:
    return REPO_ROOT / "bundles" / name / "models"


def test_every_bundle_ships_small_weights_that_the_index_names():
    index = {e["name"]: e for e in json.loads((REPO_ROOT / "model_zoo.json").read_text())["bundles"]}
    for name in BUNDLES:
        for file in ("model.pt", "model.ts"):
            path = _models(name) / file
            assert path.is_file(), f"{name}: {path} is not shipped"
            assert path.stat().st_size < 5 * 2**20, f"{name}: {file} is {path.stat().st_size} bytes (limit 5 MiB)"
            assert index[name]["weights"][file]["bytes"] == path.stat().st_size
        assert "first_batch" in json.loads((REPO_ROOT / "bundles" / name / "docs" / "reference_metrics.json").read_text())
        import torch

        torch.jit.load(str(_models(name) / "model.ts"), map_location="cpu")  # the model zoo's TorchScript check


@pytest.fixture(scope="module")
def first_test_batch(tmp_path_factory) -> Path:
    """The default data (lidc-phantom quick subset, as the shipped weights were evaluated on), and a datalist
    whose test section is its first 32 images."""
    from multirater_monai.data import load_multirater_datalist, prepare_dataset, quick_options

    root = tmp_path_factory.mktemp("lidc_quick") / "data"
    datalist = Path(prepare_dataset("lidc-phantom", root, **quick_options("lidc-phantom")))
    doc = json.loads(datalist.read_text())
    doc["test"] = load_multirater_datalist(datalist, "test")[:32]  # absolute paths
    subset = root / "datalist_first32.json"
    subset.write_text(json.dumps(doc))
    return subset


@pytest.mark.parametrize("name", BUNDLES)
def test_shipped_weights_score_the_recorded_metrics(name, first_test_batch, tmp_path):
    """Evaluated in this process with the bundle's own evaluate.json on the first 32 test images: every
    recorded per-image figure again (each setting starts from the same seed, and 32 images are one
    validation batch, so even the samples are the full run's). Exact on one machine; across CPUs and
    thread counts a thresholded pixel may flip, hence the tolerance."""
    from monai.bundle import run

    bundle = REPO_ROOT / "bundles" / name
    configs = bundle / "configs"
    run(config_file=[str(configs / "train.json"), str(configs / "evaluate.json")],
        **{"bundle_root": str(bundle), "dataset_dir": str(first_test_batch.parent), "datalist": str(first_test_batch),
           "output_dir": str(tmp_path), "num_workers": 0})
    measured = json.loads((tmp_path / "metrics.json").read_text())["per_image"]
    recorded = json.loads((bundle / "docs" / "reference_metrics.json").read_text())["first_batch"]["per_image"]
    assert measured.keys() == recorded.keys()
    for setting, rows in recorded.items():
        assert [Path(r["image"]).name for r in measured[setting]] == [r["image"] for r in rows], setting
        for got, want in zip(measured[setting], rows):
            for key, value in want.items():
                if key == "image":
                    continue
                if value is None:
                    assert got[key] is None, (setting, want["image"], key)
                else:
                    assert got[key] == pytest.approx(value, abs=0.01), (setting, want["image"], key)


@pytest.mark.parametrize("name", BUNDLES)
def test_inference_runs_on_the_shipped_weights_without_training(name, tmp_path):
    """inference.json as a fresh clone has it (bundle_root = the bundle folder, its shipped model.pt), in
    this process: every output file is written for a 64x64 image."""
    from monai.bundle import run

    (tmp_path / "in").mkdir()
    _disk_image(tmp_path / "in" / "disk.nii.gz")
    bundle = REPO_ROOT / "bundles" / name
    run(config_file=str(bundle / "configs" / "inference.json"),
        **{"bundle_root": str(bundle), "input_dir": str(tmp_path / "in"), "output_dir": str(tmp_path / "out")})
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "disk_overlay.png" in written and any(n.endswith(".nii.gz") for n in written), written


def _disk_image(path: Path, depth: int = 0, size: int = 64) -> None:
    """A bright disk (40 HU) on lung background (-800 HU), size x size (x depth), with a non-trivial affine."""
    import nibabel as nib

    y, x = np.mgrid[:size, :size]
    image = np.where((y - 30) ** 2 + (x - 34) ** 2 < 100, 40.0, -800.0).astype(np.float32)
    if depth:
        image = np.stack([np.roll(image, 3 * z, axis=1) for z in range(depth)], axis=2)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    nib.save(nib.Nifti1Image(image, affine), path)


def _plain(bundle: str, image: Path, out: Path) -> None:
    """The script under a Python that cannot import MONAI or this package (an import raises ImportError)."""
    code = ("import sys, runpy; sys.modules['monai'] = None; sys.modules['multirater_monai'] = None; "
            f"sys.argv = ['plain', '--bundle', {str(REPO_ROOT / 'bundles' / bundle)!r}, '--image', {str(image)!r}, "
            f"'--out', {str(out)!r}]; runpy.run_path({str(PLAIN_SCRIPT)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_plain_torch_inference_equals_the_bundle_run_from_another_folder(tmp_path):
    """unet_fusion is deterministic: the plain script's mask equals the bundle's own inference, which runs
    from a folder outside the repository with no --bundle_root (the root comes from --config_file). The
    image is 60x60, so both must pad it to the bundle's divisor (8) the same way and crop it back."""
    import nibabel as nib
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / "unet_fusion" / "configs" / "inference.json"))
    metadata = json.loads((REPO_ROOT / "bundles" / "unet_fusion" / "configs" / "metadata.json").read_text())
    assert metadata["spatial_divisor"] == parser.get_parsed_content("backbone").spatial_divisor == 8

    (tmp_path / "in").mkdir()
    _disk_image(tmp_path / "in" / "disk.nii.gz", size=60)
    out = bundle_ok(["run", "--config_file", str(REPO_ROOT / "bundles" / "unet_fusion" / "configs" / "inference.json"),
                     "--input_dir", "in", "--output_dir", "out"], cwd=tmp_path)
    assert "wrote 1 image(s)" in out
    _plain("unet_fusion", tmp_path / "in" / "disk.nii.gz", tmp_path / "plain")
    bundle_mask = nib.load(tmp_path / "out" / "disk_consensus.nii.gz")
    plain_mask = nib.load(tmp_path / "plain" / "disk_masks.nii.gz")
    assert np.allclose(plain_mask.affine, bundle_mask.affine) and np.allclose(plain_mask.affine[0, 0], 0.7)
    assert plain_mask.shape == (60, 60, 1)
    assert np.array_equal(plain_mask.get_fdata()[..., 0], bundle_mask.get_fdata().reshape(60, 60))
    assert 200 < plain_mask.get_fdata().sum() < 500  # the disk (314 pixels) is found


def test_plain_torch_inference_runs_a_volume_slice_by_slice(tmp_path):
    """A 2D bundle on a 64x64x3 volume: (64, 64, 3, C) masks in the volume's geometry, each slice the
    2D result of that slice; D-Persona's channels are named after its outputs."""
    import nibabel as nib

    _disk_image(tmp_path / "volume.nii.gz", depth=3)
    _plain("unet_fusion", tmp_path / "volume.nii.gz", tmp_path / "out3d")
    volume = nib.load(tmp_path / "out3d" / "volume_masks.nii.gz")
    assert volume.shape == (64, 64, 3, 1)
    assert np.allclose(volume.affine, nib.load(tmp_path / "volume.nii.gz").affine)
    source = nib.load(tmp_path / "volume.nii.gz").get_fdata()
    nib.save(nib.Nifti1Image(source[..., 2].astype(np.float32), np.eye(4)), tmp_path / "slice2.nii.gz")
    _plain("unet_fusion", tmp_path / "slice2.nii.gz", tmp_path / "out2d")
    assert np.array_equal(volume.get_fdata()[:, :, 2, 0], nib.load(tmp_path / "out2d" / "slice2_masks.nii.gz").get_fdata()[..., 0])

    _plain("dpersona", tmp_path / "slice2.nii.gz", tmp_path / "dp")
    channels = json.loads((tmp_path / "dp" / "slice2_masks.json").read_text())["channels"]
    masks = nib.load(tmp_path / "dp" / "slice2_masks.nii.gz").get_fdata()
    assert masks.shape == (64, 64, len(channels)) and len(channels) == 4 + 16  # A1..A4, then 16 samples
    assert set(np.unique(masks)) <= {0.0, 1.0}
