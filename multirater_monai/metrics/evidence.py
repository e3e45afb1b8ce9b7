"""Evidence over seeds and test images: mean +- std over seeds, paired bootstrap intervals, claim verdicts.

A comparison of two methods on 10-250 test images and one seed cannot tell a real difference from
noise. The protocol of the comparison scripts (``benchmarks/compare_methods.py --seeds``):

* every row is trained and evaluated once per seed; a row reports the mean and the standard
  deviation of each metric over the seeds;
* a claim ("D-Persona Stage II has a higher Dice_mean than the STAPLE U-Net") is the difference of
  one metric between two rows, image by image: each image's value is first averaged over the seeds,
  then a paired bootstrap over the test images (resampling images with replacement, the same images
  for both rows) gives a 95 % percentile interval of the mean difference;
* the claim **holds** when the whole interval lies on the claimed side of 0, **fails** when it lies
  wholly on the other side, and is **inconclusive** otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..utils.errors import MultiRaterDataError

__all__ = ["paired_bootstrap_interval", "claim_verdict", "mean_and_std", "per_image_values", "VERDICTS"]

VERDICTS = ("holds", "fails", "inconclusive")


def _finite_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray([np.nan if v is None else v for v in x], dtype=float)
    b = np.asarray([np.nan if v is None else v for v in y], dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise MultiRaterDataError(
            f"paired values must be two 1-D sequences of the same length, got {a.shape} and {b.shape}; fix: pair the "
            "rows image by image (the same test split for both methods)."
        )
    keep = np.isfinite(a) & np.isfinite(b)  # an image where either metric is undefined takes no part
    return a[keep], b[keep]


def paired_bootstrap_interval(x: Sequence[float], y: Sequence[float], num_resamples: int = 10000,
                              confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``x - y`` over the images and its paired bootstrap percentile interval ``(mean, low, high)``.

    ``x[i]`` and ``y[i]`` are two methods' values on image i; pairs with a NaN/None are dropped.
    """
    a, b = _finite_pairs(x, y)
    if a.size == 0:
        raise MultiRaterDataError("no image has a value for both rows; fix: compare a metric both rows report.")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(int(num_resamples), diff.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(diff.mean()), float(low), float(high)


def claim_verdict(low: float, high: float, larger_is_better: bool = True) -> str:
    """"holds" / "fails" / "inconclusive" for an interval of (claimed row - other row)."""
    if not larger_is_better:
        low, high = -high, -low
    if low > 0:
        return "holds"
    if high < 0:
        return "fails"
    return "inconclusive"


def mean_and_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds, ignoring None/NaN (std 0 for one value, NaN for none)."""
    finite = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def per_image_values(rows_per_seed: Sequence[Sequence[Mapping]], metric: str) -> dict[str, float]:
    """``{image: value averaged over seeds}`` from each seed's per-image rows (``{"image": ..., metric: ...}``)."""
    sums: dict[str, list[float]] = {}
    for rows in rows_per_seed:
        for row in rows:
            if "image" not in row:
                raise MultiRaterDataError("per-image rows carry no 'image' name; fix: re-run the evaluation.")
            value = row.get(metric)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                sums.setdefault(str(row["image"]), []).append(float(value))
    return {image: float(np.mean(values)) for image, values in sums.items()}
