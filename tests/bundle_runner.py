"""Running MONAI's own bundle commands in a subprocess, for the end-to-end bundle tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO_ROOT, threads_per_worker


def bundle(args: list[str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """``python -m monai.bundle *args``; 2 threads, as on CI."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_worker()), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def bundle_ok(args: list[str], cwd: Path = REPO_ROOT) -> str:
    """As :func:`bundle`, failing the test with the tail of the output when the command fails."""
    proc = bundle(args, cwd)
    assert proc.returncode == 0, f"monai.bundle {' '.join(args[:3])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def run_inference(configs: Path, root: Path, synthetic_dir: Path, tmp_path: Path, overrides: list[str],
                  num_images: int = 6) -> tuple[Path, list[Path]]:
    """Copy ``num_images`` synthetic images to a folder and run the bundle's inference.json on it.

    Returns the output folder and the source images (their stems name the outputs)."""
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((synthetic_dir / "images").glob("*.nii.gz"))[:num_images]
    for src in sources:
        (images / src.name).write_bytes(src.read_bytes())
    out_dir = tmp_path / "pred"
    bundle_ok(["run", "--config_file", str(configs / "inference.json"), "--bundle_root", str(root),
               "--input_dir", str(images), "--output_dir", str(out_dir), *overrides])
    return out_dir, sources


def stem(path: Path) -> str:
    return path.name[: -len(".nii.gz")]


def rater_areas(out_dir: Path, sources: list[Path], postfix: str = "personalized", num_raters: int = 4):
    """Foreground pixels per rater channel of ``<stem>_<postfix>.nii.gz``, summed over the images."""
    import nibabel as nib
    import torch

    areas = torch.zeros(num_raters)
    for src in sources:
        mask = nib.load(out_dir / f"{stem(src)}_{postfix}.nii.gz").get_fdata()
        assert set(mask.ravel().tolist()) <= {0.0, 1.0}, "the per-rater masks should be binary"
        areas += torch.as_tensor(mask.reshape(-1, num_raters).sum(0))
    return areas


def export_torchscript(configs: Path, root: Path, tmp_path: Path, overrides: list[str]):
    """``ckpt_export`` of the bundle's trained ``models/model.pt``; returns the loaded TorchScript module."""
    import torch

    ts_path = tmp_path / "model.ts"
    bundle_ok(["ckpt_export", "network_def", "--filepath", str(ts_path), "--ckpt_file", str(root / "models" / "model.pt"),
               "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "inference.json"),
               "--bundle_root", str(root), *overrides])
    return torch.jit.load(str(ts_path))


# Overrides that make each bundle's network tiny (fast on 2 CPU cores), for train and inference configs alike.
_TINY_BACKBONE = ["--backbone#channels", "[8,16,32]", "--backbone#feature_channels", "8"]
TINY = {
    "dpersona": [*_TINY_BACKBONE, "--num_samples", "6", "--bank_size", "30"],
    "prob_unet": [*_TINY_BACKBONE, "--num_samples", "5"],
    "proseg": [*_TINY_BACKBONE, "--network_def#hidden", "8", "--num_samples", "6"],
    "avap": [*_TINY_BACKBONE, "--network_def#agreement_channels", "8"],
    "mh_unet": list(_TINY_BACKBONE),
    "cm_global": list(_TINY_BACKBONE),
    "cm_pixel": [*_TINY_BACKBONE, "--network_def#cm_hidden_channels", "8"],
    "pionono": [*_TINY_BACKBONE, "--network_def#head_hidden", "8", "--num_samples", "6"],
    "tab": [*_TINY_BACKBONE, "--network_def#embed_dim", "16", "--num_samples", "6"],
    "padl": [*_TINY_BACKBONE, "--num_samples", "6"],
    "mrnet": [*_TINY_BACKBONE, "--network_def#head_hidden", "8", "--num_samples", "6"],
    "unet_fusion": ["--backbone#channels", "[8,16,32]", "--backbone#strides", "[2,2]", "--backbone#num_res_units", "1"],
}
# The synthetic data set of conftest.synthetic_dir: values in [0, 1], raters in their own order.
SYNTHETIC = ["--dataset_name", "synthetic", "--rank_raters_by_area", "False", "--intensity_range", "[0,1]"]


def two_structure_row(configs: Path, tmp_path: Path, synthetic_args: list[str], training_args: list[str]) -> dict:
    """Train and evaluate a bundle on a 40-image synthetic set of two structures (lesion + core, 32x32,
    four raters); its evaluation row, whose keys are prefixed with the structures' names."""
    import json

    from multirater_monai.data import prepare_synthetic

    data = tmp_path / "data"
    prepare_synthetic(data, num_samples=40, num_raters=4, seed=5, size=32, num_structures=2)
    root = tmp_path / "bundle"
    two = [*synthetic_args, "--num_structures", "2", "--dataset_dir", str(data), "--bundle_root", str(root)]
    bundle_ok(["run", "training", "--config_file", str(configs / "train.json"), *two, *training_args])
    bundle_ok(["run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']", *two])
    [row] = json.loads((root / "eval" / "metrics.json").read_text())["rows"]
    return row


def overrides_dict(args: list[str]) -> dict:
    """``["--a#b", "[1,2]", ...]`` -> ``{"a#b": [1, 2], ...}`` (values parsed as MONAI's CLI does)."""
    import ast

    out = {}
    for key, value in zip(args[::2], args[1::2]):
        try:
            out[key[2:]] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key[2:]] = value
    return out
