"""Benchmark: set metrics, vectorised (one matrix product per image) vs a per-pair Python loop.

Workload (docs/DESIGN.md section 6): 100 images x 50 sampled predictions x 4 raters at 128x128;
all metrics: GED with its three terms, Dice_soft, Dice_max, Dice_match, and the per-rater Dice of
4 personalized outputs (the first 4 samples stand in for them). Both conventions (``default``,
``dpersona``). The loop reference is written here on purpose (numpy booleans, one pair at a
time) and also checks that both implementations give the same numbers.

    python benchmarks/bench_metrics.py [--images 100] [--samples 50] [--raters 4] [--size 128]
                                       [--threads 2] [--batch 10] [--naive-images 100] [--repeats 3]

Prints a markdown table; each time is the best of ``--repeats`` runs (the least disturbed by other
processes on a shared machine; the load average is printed too). Target: <= 16 ms per image.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from multirater_monai.metrics import compute_set_metrics, dice_per_rater

THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)


def make_data(n_images: int, n_samples: int, n_raters: int, size: int, seed: int = 0):
    """Lesion-like discs: raters and samples disagree on the radius and centre, samples are soft."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")

    def discs(n, soft):
        centre = size / 2 + torch.randn(n_images, n, 2, generator=g) * size / 32
        radius = size / 8 * (1 + 0.25 * torch.randn(n_images, n, 1, 1, generator=g)).clamp(0.2, 2)
        dist = ((yy - centre[..., 0, None, None]) ** 2 + (xx - centre[..., 1, None, None]) ** 2).sqrt()
        return torch.sigmoid((radius - dist) / 2) if soft else (dist < radius).float()

    pred = discs(n_samples, soft=True)
    label = discs(n_raters, soft=False)
    rater_mask = torch.ones(n_images, n_raters, dtype=torch.bool)
    rater_mask[::10, -1] = False  # every 10th image misses its last rater, as LIDC nodules do
    label[~rater_mask] = 0.0
    return pred, label, rater_mask


# --------------------------------------------------------------------------- per-pair loop reference


def _iou(x, y, compat):
    inter, union = np.logical_and(x, y).sum(), np.logical_or(x, y).sum()
    if compat == "dpersona":
        return inter / (union + 1e-8)
    return 1.0 if union == 0 else inter / union


def _dice(x, y, compat):
    inter, total = np.logical_and(x, y).sum(), x.sum() + y.sum()
    if compat == "dpersona":
        return (2 * inter + 1e-8) / (total + 1e-8)
    return 1.0 if total == 0 else 2 * inter / total


def loop_metrics(pred: np.ndarray, label: np.ndarray, mask: np.ndarray, compat: str, n_personal: int) -> dict:
    """All metrics for ONE image, pair by pair."""
    ps = [p > 0.5 for p in pred]
    as_ = [a > 0.5 for a, keep in zip(label, mask) if keep]
    d_pa = np.mean([1 - _iou(p, a, compat) for p in ps for a in as_])
    d_pp = np.mean([1 - _iou(p, q, compat) for p in ps for q in ps])
    d_aa = np.mean([1 - _iou(a, b, compat) for a in as_ for b in as_])
    p_soft, a_soft = pred.astype(np.float64).mean(0), np.mean(as_, axis=0)
    dice_soft = np.mean([_dice(p_soft > t, a_soft > t, compat) for t in THRESHOLDS])
    mat = np.array([[_dice(p, a, compat) for a in as_] for p in ps])
    rows, cols = linear_sum_assignment(mat, maximize=True)
    per_rater = [_dice(ps[r], label[r] > 0.5, compat) if mask[r] else np.nan for r in range(n_personal)]
    return {
        "ged": 2 * d_pa - d_pp - d_aa,
        "d_pa": d_pa,
        "d_pp": d_pp,
        "d_aa": d_aa,
        "dice_soft": dice_soft,
        "dice_max": mat.max(0).mean(),
        "dice_match": mat[rows, cols].mean(),
        "dice_per_rater": per_rater,
    }


# --------------------------------------------------------------------------- timing


def run_vectorised(pred, label, mask, compat, batch):
    out = {}
    n_raters = label.shape[1]
    for start in range(0, pred.shape[0], batch):
        sl = slice(start, start + batch)
        res = compute_set_metrics(pred[sl], label[sl], mask[sl], compat=compat)
        res["dice_per_rater"] = dice_per_rater(pred[sl, :n_raters], label[sl], mask[sl], compat=compat)
        for k, v in res.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def run_loop(pred, label, mask, compat, n_images):
    p, lab, m = pred.numpy(), label.numpy(), mask.numpy()
    rows = [loop_metrics(p[i], lab[i], m[i], compat, label.shape[1]) for i in range(n_images)]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--raters", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10, help="images per vectorised call (an evaluator batch)")
    parser.add_argument("--naive-images", type=int, default=100, help="images timed with the loop reference")
    parser.add_argument("--repeats", type=int, default=3, help="report the best of this many runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pred, label, mask = make_data(args.images, args.samples, args.raters, args.size)
    n_loop = min(args.naive_images, args.images)
    run_vectorised(pred[:2], label[:2], mask[:2], "default", args.batch)  # warm-up (thread pools, allocator)

    rows, max_diff = [], {}
    load_before = os.getloadavg()[0]
    for compat in ("default", "dpersona"):
        t_vec, t_loop = float("inf"), float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            vec = run_vectorised(pred, label, mask, compat, args.batch)
            t_vec = min(t_vec, time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref = run_loop(pred, label, mask, compat, n_loop)
            t_loop = min(t_loop, time.perf_counter() - t0)
        max_diff[compat] = max(float(np.nanmax(np.abs(vec[k][:n_loop] - ref[k]))) for k in ref)
        ms_vec, ms_loop = 1000 * t_vec / args.images, 1000 * t_loop / n_loop
        rows.append((compat, "vectorised (torch matmul)", args.images, t_vec, ms_vec))
        rows.append((compat, "per-pair loop (numpy)", n_loop, t_loop, ms_loop))

    print(f"command: python {' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])}")
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):  # the model name says more than "x86_64"
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    print(f"machine: {platform.platform()}, {cpu}, os.cpu_count()={os.cpu_count()}")
    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, numpy {np.__version__}")
    load_after = os.getloadavg()[0]
    print(f"1-min load average before / after: {load_before:.2f} / {load_after:.2f}; best of {args.repeats} runs")
    print(
        f"workload: {args.images} images x {args.samples} samples x {args.raters} raters at {args.size}x{args.size}; "
        f"GED + terms, Dice_soft, Dice_max, Dice_match, Dice per rater ({args.raters} personalized outputs); "
        f"vectorised in batches of {args.batch} images"
    )
    print()
    print("| mode | implementation | images timed | total (s) | ms / image | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for i, (compat, impl, n, total, ms) in enumerate(rows):
        speedup = rows[i + 1][4] / ms if i % 2 == 0 else 1.0
        print(f"| {compat} | {impl} | {n} | {total:.2f} | {ms:.1f} | {speedup:.0f}x |")
    print()
    print(
        "max |vectorised - loop| over all metrics and timed images: "
        + ", ".join(f"{k} {v:.1e}" for k, v in max_diff.items())
    )
    print("target (docs/DESIGN.md section 6): <= 16 ms per image")


if __name__ == "__main__":
    main()
