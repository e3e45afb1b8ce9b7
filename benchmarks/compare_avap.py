"""AVAP vs a multi-head U-Net and the unet_fusion baselines, same budget; and the Table IV ablation.

Claims checked (AVAP paper, Table II and IV):
- the AVM's calibrated map beats a majority-vote U-Net on 'Mean Voting';
- the APM beats per-rater training (one U-Net per rater) on 'Average';
- the controller needs the rater code: "code only" ~ "both" > "features only" on 'Average'.

Every method uses the same U-Net feature backbone (``UNetFeatureBackbone``, encoder "small") and the
same number of optimiser steps (AVAP: step 1 + step 2; per-rater: that many steps for EACH rater's
network). Training runs in-process on in-memory tensors (random flips), so a table costs minutes on a
CPU; the bundles train the same networks through MONAI engines.

Methods:
- ``AVAP``: two steps (backbone + AVM, then APM with a random present rater's code).
- ``AVAP code only`` / ``AVAP features only``: step 2 repeated from the same step-1 weights with the
  controller reading only the rater code / only GAP(F) (Table IV); 'Mean Voting' is step 1's, shared.
- ``MH-UNet``: backbone + one 1x1 output per rater (Guan et al.), Dice + BCE on every present rater.
- ``U-Net majority``: unet_fusion ``--fusion majority``; its probability is the calibrated map and
  its single mask is compared with every rater for 'Average'.
- ``U-Net per rater``: unet_fusion ``--fusion rater`` for each rater (the paper's M1..MR); rater r's
  network gives output r, and the mean of their probabilities is the calibrated map.

Data: ``qubiq`` (brain growth, 7 raters, ../shared/data/qubiq_brain_growth) and ``synthetic2``
(two structures, lesion + core, 4 raters with distinct styles). Run::

    OMP_NUM_THREADS=1 python benchmarks/compare_avap.py --datasets qubiq synthetic2 --steps1 300 --steps2 200
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from multirater_monai.data import make_synthetic_sample  # noqa: E402
from multirater_monai.metrics import average_rater_dice, compute_set_metrics, mean_voting_dice  # noqa: E402
from multirater_monai.networks import AVAP, UNetFeatureBackbone  # noqa: E402

Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # image (N,1,H,W), label (N,K*R,H,W), mask (N,K*R)


# ----------------------------------------------------------------------------- data
def load_qubiq(size: int, seed: int = 0) -> tuple[Data, Data, int, int]:
    from monai.transforms import Compose, Resized, ScaleIntensityRanged

    from multirater_monai.data import load_multirater_datalist, multirater_loading, prepare_dataset

    out = Path(os.environ.get("MULTIRATER_DATA_DIR", Path.home() / ".cache" / "multirater_monai")) / "qubiq-avap-bench"
    datalist = str(out / "datalist.json") if (out / "datalist.json").is_file() else prepare_dataset(
        "qubiq", out, root=str(REPO_ROOT.parent / "shared" / "data" / "qubiq_brain_growth"), split=(0.7, 0.0, 0.3),
        seed=seed)
    transform = Compose([
        multirater_loading(spatial_dims=2, num_raters=7),
        ScaleIntensityRanged("image", 0, 255, 0.0, 1.0, clip=True),
        Resized(["image", "label"], (size, size), mode=["bilinear", "nearest"]),
    ])

    def section(key: str) -> Data:
        items = [transform(e) for e in load_multirater_datalist(datalist, key, num_raters=7)]
        return tuple(torch.stack([torch.as_tensor(i[k]).float() if k != "rater_mask" else torch.as_tensor(i[k])
                                  for i in items]) for k in ("image", "label", "rater_mask"))

    return section("training"), section("test"), 7, 1


def load_synthetic2(size: int, n_train: int = 96, n_test: int = 48) -> tuple[Data, Data, int, int]:
    def make(n: int, seed: int) -> Data:
        s = [make_synthetic_sample(np.random.default_rng([seed, i]), size=size, num_structures=2) for i in range(n)]
        return tuple(torch.from_numpy(np.stack([x[k] for x in s])) for k in ("image", "label", "rater_mask"))

    return make(n_train, 0), make(n_test, 1), 4, 2


# ----------------------------------------------------------------------------- baselines
class OutputHeadUNet(nn.Module):
    """Feature backbone + a 1x1 convolution to ``out_channels`` logits (majority / per-rater / multi-head)."""

    def __init__(self, out_channels: int, feature_channels: int, channels) -> None:
        super().__init__()
        self.backbone = UNetFeatureBackbone(2, 1, feature_channels, encoder="small", channels=channels)
        self.head = nn.Conv2d(feature_channels, out_channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(image))


def dice_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Batch Dice (eq. 8) + BCE per channel, channels weighted by ``weight`` (B, C) (0 = missing rater)."""
    prob = torch.sigmoid(logits)
    w = weight.to(logits.dtype)
    inter = ((prob * target).sum((2, 3)) * w).sum(0)
    denom = ((prob + target).sum((2, 3)) * w).sum(0)
    used = w.sum(0) > 0
    dice = (1 - (2 * inter + 1e-5) / (denom + 1e-5))[used].mean()
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((2, 3)) * w).sum() / w.sum()
    return dice + bce


def majority(label: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    b, c = label.shape[:2]
    r = c // k
    m = mask.reshape(b, k, r, 1, 1).float()
    votes = (label.reshape(b, k, r, *label.shape[2:]) * m).sum(2) / m.sum(2)
    return (votes > 0.5).float()


# ----------------------------------------------------------------------------- training
def batches(data: Data, steps: int, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, data[0].shape[0], (batch,), generator=g)
        image, label, mask = data[0][idx], data[1][idx], data[2][idx]
        if torch.rand((), generator=g) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        if torch.rand((), generator=g) < 0.5:
            image, label = image.flip(-2), label.flip(-2)
        yield image, label, mask


def fit(net: nn.Module, params, steps: int, data: Data, loss_fn, lr: float, batch: int, seed: int) -> float:
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=1e-5)
    start = time.perf_counter()
    for image, label, mask in batches(data, steps, batch, seed):
        net.train()
        loss = loss_fn(image, label, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- evaluation
def evaluate(calibrated: torch.Tensor, personalized: torch.Tensor, test: Data, r: int, k: int) -> dict[str, float]:
    """Per structure 'Mean Voting', 'Average' and the set table of the per-rater outputs, averaged over structures."""
    label, mask = test[1], test[2]
    rows = []
    for s in range(k):
        part = slice(s * r, (s + 1) * r)
        row = {"mean_voting": float(mean_voting_dice(calibrated[:, s:s + 1], label[:, part], mask[:, part]).nanmean())}
        per_rater = average_rater_dice(personalized[:, part], label[:, part], mask[:, part])
        row["average"] = float(torch.nanmean(torch.nanmean(per_rater, 0)))
        table = compute_set_metrics(personalized[:, part], label[:, part], mask[:, part])
        for key in ("ged", "dice_soft", "dice_max", "dice_match"):
            row[key] = float(torch.nanmean(table[key]))
        row["dice_mean"] = float(torch.nanmean(torch.nanmean(table["dice_per_rater"], 0)))
        rows.append(row)
    return {f"s{s + 1}_{key}": v for s, row in enumerate(rows) for key, v in row.items()}


def run_dataset(name: str, args) -> list[dict]:
    train, test, r, k = load_qubiq(args.size) if name == "qubiq" else load_synthetic2(args.size)
    print(f"\n[{name}] train {tuple(train[1].shape)}, test {tuple(test[1].shape)}, R={r}, K={k}", flush=True)
    channels, feat = tuple(args.channels), args.feature_channels
    budget = args.steps1 + args.steps2
    results: list[dict] = []

    def record(method: str, seconds: float, calibrated, personalized) -> None:
        row = {"method": method, "train_s": round(seconds, 1), **evaluate(calibrated, personalized, test, r, k)}
        results.append(row)
        print(f"  {method}: " + ", ".join(f"{key} {v:.4f}" for key, v in row.items() if key.endswith(("mean_voting", "average"))), flush=True)

    # AVAP: step 1 once, then step 2 for the full model and both Table IV ablations
    torch.manual_seed(args.seed)
    avap = AVAP.build(num_raters=r, num_structures=k, backbone_channels=channels, feature_channels=feat,
                      agreement_channels=feat)
    t1 = fit(avap, avap.parameters_to_train(), args.steps1, train,
             lambda i, y, m: avap.training_objective(i, y, m)["loss"], args.lr, args.batch, args.seed)
    step1_state = copy.deepcopy(avap.state_dict())
    for method, use_code, use_features in (("AVAP", True, True), ("AVAP code only", True, False),
                                           ("AVAP features only", False, True)):
        torch.manual_seed(args.seed + 1)
        net = AVAP.build(num_raters=r, num_structures=k, backbone_channels=channels, feature_channels=feat,
                         agreement_channels=feat, use_rater_code=use_code, use_features=use_features)
        net.load_state_dict({n: v for n, v in step1_state.items() if not n.startswith("preference_head.")}, strict=False)
        net.start_stage2()
        t2 = fit(net, net.parameters_to_train(), args.steps2, train,
                 lambda i, y, m, net=net: net.training_objective(i, y, m)["loss"], args.lr2, args.batch, args.seed)
        with torch.no_grad():
            out = net.eval()(test[0])
        n_agree = k * (r + 1)
        record(method, t1 + t2, net.calibrated_map(out[:, :n_agree]), torch.sigmoid(out[:, n_agree:]))
        if method == "AVAP":  # the same network read with the smooth calibrated map (sum_m m p_m / R)
            net.calibration = "expectation"
            record("AVAP (expectation map)", t1 + t2, net.calibrated_map(out[:, :n_agree]), torch.sigmoid(out[:, n_agree:]))

    # MH-UNet: one output per (structure, rater), every present rater supervised
    torch.manual_seed(args.seed)
    mh = OutputHeadUNet(k * r, feat, channels)
    t = fit(mh, mh.parameters(), budget, train, lambda i, y, m: dice_bce(mh(i), y, m), args.lr, args.batch, args.seed)
    with torch.no_grad():
        prob = torch.sigmoid(mh.eval()(test[0]))
    record("MH-UNet", t, prob.reshape(prob.shape[0], k, r, *prob.shape[2:]).mean(2), prob)

    # U-Net majority vote (unet_fusion --fusion majority)
    torch.manual_seed(args.seed)
    mv = OutputHeadUNet(k, feat, channels)
    t = fit(mv, mv.parameters(), budget, train,
            lambda i, y, m: dice_bce(mv(i), majority(y, m, k), torch.ones(y.shape[0], k)), args.lr, args.batch, args.seed)
    with torch.no_grad():
        prob = torch.sigmoid(mv.eval()(test[0]))
    record("U-Net majority", t, prob, prob.repeat_interleave(r, dim=1))

    # U-Net per rater (unet_fusion --fusion rater, one network per rater on the samples it annotated)
    outputs, total = [], 0.0
    for rater in range(r):
        torch.manual_seed(args.seed)
        net = OutputHeadUNet(k, feat, channels)
        channels_of_rater = [s * r + rater for s in range(k)]
        has = train[2][:, channels_of_rater].any(1)
        subset = (train[0][has], train[1][has][:, channels_of_rater], train[2][has][:, channels_of_rater])
        total += fit(net, net.parameters(), budget, subset, lambda i, y, m, net=net: dice_bce(net(i), y, m),
                     args.lr, args.batch, args.seed)
        with torch.no_grad():
            outputs.append(torch.sigmoid(net.eval()(test[0])))  # (B, K)
    per = torch.stack(outputs, 2)  # (B, K, R)
    record("U-Net per rater", total, per.mean(2), per.reshape(per.shape[0], k * r, *per.shape[3:]))
    return results


def markdown(rows: list[dict]) -> str:
    keys = [key for key in rows[0] if key != "method"]
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + " | ".join([row["method"]] + [f"{row[key]:.4f}" if isinstance(row[key], float) else str(row[key])
                                                   for key in keys]) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["qubiq", "synthetic2"], choices=["qubiq", "synthetic2"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps1", type=int, default=300)
    parser.add_argument("--steps2", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--lr2", type=float, default=3e-3)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--feature_channels", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO_ROOT / "runs" / "compare_avap"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    all_rows = {}
    for name in args.datasets:
        rows = run_dataset(name, args)
        all_rows[name] = rows
        print(f"\n### {name} (steps {args.steps1} + {args.steps2}, {args.size}x{args.size}, seed {args.seed})\n")
        print(markdown(rows), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"args": vars(args), "results": all_rows}, indent=1))


if __name__ == "__main__":
    main()
