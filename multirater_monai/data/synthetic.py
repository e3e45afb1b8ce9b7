"""Seeded synthetic multi-rater data: lesion-like objects with ambiguous boundaries, raters with styles.

Each sample starts from a soft *lesion probability* field ``p`` in [0, 1]: a lobulated body whose
edge falls off over a few pixels (the ambiguous boundary), plus one or two faint lobes whose peak
probability stays below 0.8. The image shows ``p`` through partial-volume blur, a smooth texture
and noise, so everything the raters disagree about is visible in the image. Each rater turns
``p`` into a mask with a fixed, learnable style:

===============  =====================================================================
style            rule (``s`` = image size / 64)
===============  =====================================================================
conservative     ``p > 0.8``: only the confident core
liberal          ``p > 0.2``: includes the faint rim and the faint lobes
smooth           ``gaussian(p, 2.5 s) > 0.5``: boundary smoothed, small protrusions lost
noisy            ``p + 4p(1-p) jitter > 0.5``, smooth noise (sigma ``s``, sd 0.3): ragged edge
misses_faint     ``p_body > 0.5``: the body only, faint lobes omitted
===============  =====================================================================

Default raters (R=4): conservative, smooth, liberal, noisy (styles cycle when R > 5).
Expected areas: conservative < smooth < liberal; noisy has the roughest boundary.

Several structures (``num_structures=2`` adds an inner "core", like the optic cup inside the
disc): ``label`` is ``(R * K, H, W)``, structure-major (all raters of structure 0, then all of
structure 1); the datalist header names them in ``"structures"`` and gives ``"label_channels"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import apply_transform
from scipy.ndimage import gaussian_filter

from ..utils.atomic import atomic_output_dir
from .datalist import split_counts, split_entries, write_multirater_datalist

__all__ = [
    "RATER_STYLES",
    "DEFAULT_STYLES",
    "STRUCTURE_NAMES",
    "make_synthetic_sample",
    "SyntheticMultiRaterDataset",
    "prepare_synthetic",
]

RATER_STYLES = ("conservative", "smooth", "liberal", "noisy", "misses_faint")
DEFAULT_STYLES = ("conservative", "smooth", "liberal", "noisy")
STRUCTURE_NAMES = ("lesion", "core")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Spatially correlated noise with unit standard deviation."""
    n = gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-8)


def _resolve_styles(num_raters: int, styles: Sequence[str] | None) -> list[str]:
    if styles is None:
        base = DEFAULT_STYLES if num_raters <= len(DEFAULT_STYLES) else RATER_STYLES
        styles = [base[i % len(base)] for i in range(num_raters)]
    styles = list(styles)
    if len(styles) != num_raters:
        raise ValueError(f"{len(styles)} styles given for num_raters={num_raters}.")
    unknown = [s for s in styles if s not in RATER_STYLES]
    if unknown:
        raise ValueError(f"unknown rater styles {unknown}; choose from {RATER_STYLES}.")
    return styles


def _size_tuple(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _fields(rng: np.random.Generator, shape: tuple[int, int], num_structures: int):
    """Probability fields: per structure (full field, body-only field), and the blur scale."""
    h, w = shape
    s = min(h, w) / 64.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    dy, dx = yy - cy, xx - cx
    dist, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
    r0 = rng.uniform(7.0, 12.0) * s
    # a lobulated outline: low angular frequencies only, so the shape stays blob-like
    radius = r0 * (1.0 + sum(rng.uniform(0.0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)))
    softness = rng.uniform(1.5, 2.5) * s  # width of the ambiguous edge, in pixels
    body = _sigmoid((radius - dist) / softness)
    full = body.copy()
    for _ in range(rng.integers(1, 3)):
        # a faint lobe attached to the body: its peak probability stays in [0.6, 0.75]
        psi = rng.uniform(0, 2 * np.pi)
        d = r0 * rng.uniform(1.0, 1.3)
        ly, lx = cy + d * np.sin(psi), cx + d * np.cos(psi)
        r1 = r0 * rng.uniform(0.45, 0.65)
        lobe = rng.uniform(0.6, 0.75) * _sigmoid((r1 - np.hypot(yy - ly, xx - lx)) / softness)
        full = np.maximum(full, lobe)
    fields = [(full, body)]
    if num_structures >= 2:
        core = _sigmoid((0.45 * radius - dist) / softness)
        fields.append((core, core))
    return fields, s


def _rate(style: str, full: np.ndarray, body: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    if style == "conservative":
        return full > 0.8
    if style == "liberal":
        return full > 0.2
    if style == "smooth":
        return gaussian_filter(full, 2.5 * s) > 0.5
    if style == "noisy":
        # the jitter is weighted by 4p(1-p) so it moves the boundary without sprinkling specks
        # over the background
        return full + 0.3 * 4 * full * (1 - full) * _smooth_noise(rng, full.shape, 1.0 * s) > 0.5
    if style == "misses_faint":
        return body > 0.5
    raise ValueError(f"unknown rater style {style!r}; choose from {RATER_STYLES}.")


def make_synthetic_sample(
    rng: np.random.Generator | int | None = None,
    size: int | tuple[int, int] = 64,
    num_raters: int = 4,
    styles: Sequence[str] | None = None,
    num_structures: int = 1,
    missing_rate: float = 0.0,
    noise_std: float = 0.05,
) -> dict[str, np.ndarray]:
    """One sample as numpy arrays.

    Returns ``image`` (1, H, W) float32, ``label`` (R*K, H, W) float32 in {0, 1} (structure-major),
    ``rater_mask`` (R*K,) bool and ``prob`` (K, H, W) float32, the true probability field.
    With ``missing_rate > 0`` each rater is dropped (all-zero channels, mask False) with that
    probability, keeping at least one; a dropped rater is dropped for every structure.
    """
    if num_structures not in (1, 2):
        raise ValueError(f"num_structures must be 1 or 2, got {num_structures}.")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    shape = _size_tuple(size)
    styles = _resolve_styles(num_raters, styles)
    fields, s = _fields(rng, shape, num_structures)

    image = 0.25 + 0.05 * _smooth_noise(rng, shape, 4.0 * s)  # background texture
    for k, (full, _) in enumerate(fields):
        # partial-volume blur: the image sees the probability field through a small PSF
        image = image + (0.5 if k == 0 else 0.25) * gaussian_filter(full, 1.0 * s)
    image = image + noise_std * rng.standard_normal(shape)

    present = rng.random(num_raters) >= missing_rate
    if not present.any():
        present[rng.integers(num_raters)] = True
    labels = []
    for full, body in fields:  # structure-major
        for r, style in enumerate(styles):
            mask = _rate(style, full, body, rng, s)
            labels.append(mask if present[r] else np.zeros(shape, dtype=bool))
    return {
        "image": image[None].astype(np.float32),
        "label": np.stack(labels).astype(np.float32),
        "rater_mask": np.tile(present, len(fields)),
        "prob": np.stack([f for f, _ in fields]).astype(np.float32),
    }


def _sample_rng(seed: int, index: int) -> np.random.Generator:
    # one independent stream per (seed, index): sample i does not depend on how many are drawn
    return np.random.default_rng([int(seed), int(index)])


class SyntheticMultiRaterDataset(Dataset):
    """In-memory synthetic data set following the sample contract (``image``, ``label``, ``rater_mask``).

    Sample ``i`` is generated on access from ``(seed, i)``, so it is identical across runs and
    workers and costs no memory. Extra keys: ``prob`` (true probability field) and ``case_id``.
    ``sample_kwargs`` go to :func:`make_synthetic_sample`.
    """

    def __init__(self, num_samples: int = 32, seed: int = 0, transform=None, **sample_kwargs) -> None:
        super().__init__(data=list(range(num_samples)), transform=transform)
        self.seed = seed
        self.sample_kwargs = sample_kwargs

    def raw_sample(self, index: int) -> dict:
        sample = make_synthetic_sample(_sample_rng(self.seed, index), **self.sample_kwargs)
        return {
            "image": MetaTensor(torch.from_numpy(sample["image"])),
            "label": MetaTensor(torch.from_numpy(sample["label"])),
            "rater_mask": torch.from_numpy(sample["rater_mask"]),
            "prob": torch.from_numpy(sample["prob"]),
            "case_id": f"syn{self.seed}_{index:05d}",
        }

    def _transform(self, index: int):
        data = self.raw_sample(self.data[index])
        return apply_transform(self.transform, data) if self.transform is not None else data


def prepare_synthetic(
    out_dir: str | os.PathLike,
    num_samples: int = 48,
    num_raters: int = 4,
    seed: int = 0,
    size: int | tuple[int, int] = 64,
    styles: Sequence[str] | None = None,
    num_structures: int = 1,
    missing_rate: float = 0.0,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    overwrite: bool = False,
) -> str:
    """Write a synthetic data set as 2D NIfTI files plus ``datalist.json``; returns the datalist path.

    Layout: ``images/synNNNNN.nii.gz`` (H, W float32), ``labels/synNNNNN[_sK]_rRR.nii.gz`` (uint8),
    missing raters as ``null``. Samples are shuffled (by ``seed``) into training/validation/test
    by ``split`` fractions. Everything is written to a temporary folder that becomes ``out_dir``
    only when complete (see ``atomic_output_dir``).
    """
    import nibabel as nib

    if num_samples < 1:
        raise ValueError("num_samples must be at least 1.")
    styles = _resolve_styles(num_raters, styles)
    split_counts(num_samples, split)  # fail before writing anything
    structures = list(STRUCTURE_NAMES[:num_structures])
    affine = np.eye(4)
    entries = []
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for i in range(num_samples):
            sample = make_synthetic_sample(
                _sample_rng(seed, i), size=size, num_raters=num_raters, styles=styles,
                num_structures=num_structures, missing_rate=missing_rate,
            )
            case = f"syn{i:05d}"
            image_rel = f"images/{case}.nii.gz"
            nib.save(nib.Nifti1Image(sample["image"][0], affine), tmp / image_rel)
            label_rel: list[str | None] = []
            for c, (mask, present) in enumerate(zip(sample["label"], sample["rater_mask"])):
                if not present:
                    label_rel.append(None)
                    continue
                k, r = divmod(c, num_raters)
                tag = f"_s{k + 1}" if num_structures > 1 else ""
                rel = f"labels/{case}{tag}_r{r + 1:02d}.nii.gz"
                nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), tmp / rel)
                label_rel.append(rel)
            entries.append({"image": image_rel, "label": label_rel, "patient_id": case, "case_id": case})
        sections = split_entries(entries, split, seed)
        write_multirater_datalist(
            tmp / "datalist.json",
            sections,
            name="synthetic",
            description="multirater_monai synthetic lesions; rater styles: " + ", ".join(styles),
            num_raters=num_raters,
            rater_names=[f"{st}" if styles.count(st) == 1 else f"{st}{r + 1}" for r, st in enumerate(styles)],
            rater_styles=styles,
            structures=structures,
            label_channels=num_raters * num_structures,
            spatial_dims=2,
            seed=seed,
            size=list(_size_tuple(size)),
        )
    return str(Path(out_dir).absolute() / "datalist.json")
