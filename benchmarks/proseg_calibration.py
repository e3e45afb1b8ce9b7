"""Is ProSeg's low Dice_soft miscalibration or over-dispersion? A report on the QUBIQ validation split.

Loads trained ProSeg bundles (``<bundle_root>/models/model.pt``, the CPU network of
``bundles/proseg/configs/train.json`` with 7 raters, e.g. the roots written by
``compare_methods.py --dataset qubiq``) and prints, on the VALIDATION split of the comparison tables
(cases 0.6 / 0.1 / 0.3, seed 0; never the test split), for the personalized outputs and 50 prior samples:

* Dice_soft and its five terms ``Dice(mean(P) > t, mean(A) > t)``, t = 0.1 ... 0.9 (docs/DESIGN.md,
  section 3), and Dice_soft of the binarized outputs' mean for comparison;
* the spread: d_pp of the outputs against d_aa of the raters (over-dispersion: d_pp > d_aa);
* calibration: the mean predicted probability mean(P) where all raters mark foreground, where
  they disagree and where none does, the largest mean(P) of each image, and a reliability table
  (the raters' mean mean(A) per bin of mean(P); a calibrated map lies on the diagonal).

    python benchmarks/proseg_calibration.py --bundle-roots runs/cmp_qubiq/ProSeg/seed0 runs/cmp_qubiq/ProSeg/seed1
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from proseg_ablation import CPU_NETWORK, cpu_backbone, qubiq_split

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)


def report(root: Path, val_data) -> None:
    from monai.data import DataLoader

    from multirater_monai.metrics.set_metrics import compute_set_metrics, soft_dice
    from multirater_monai.networks import ProSeg

    net = ProSeg.build(backbone=cpu_backbone(), **CPU_NETWORK, num_samples=50)
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    net.eval()
    batch = next(iter(DataLoader(val_data, batch_size=len(val_data))))
    image, label = batch["image"], batch["label"]
    print(f"\n## {root}\n")
    print("| outputs | Dice_soft | " + " | ".join(f"t = {t}" for t in THRESHOLDS) + " | Dice_soft of binarized outputs "
          "| d_pp | d_aa | mean(P) where all raters mark foreground / some / none | largest mean(P) per image |")
    print("|---" * 11 + "|")
    reliability = {}
    with torch.no_grad():
        for mode in ("personalized", "prior"):
            net.set_output_mode(mode)
            prob = torch.sigmoid(net(image))
            mean_p, mean_a = prob.mean(1), label.mean(1)
            terms = [float(soft_dice(prob, label, thresholds=[t]).mean()) for t in THRESHOLDS]
            spread = compute_set_metrics(prob, label)
            regions = [mean_a > 0.999, (mean_a > 0.001) & (mean_a < 0.999), mean_a < 0.001]
            inside = " / ".join(f"{float(mean_p[r].mean()):.3f}" for r in regions)
            largest = ", ".join(f"{float(m.max()):.2f}" for m in mean_p)
            print(f"| {mode} ({prob.shape[1]}) | {sum(terms) / len(terms):.4f} | " + " | ".join(f"{v:.3f}" for v in terms)
                  + f" | {float(soft_dice((prob > 0.5).float(), label).mean()):.4f} | {float(spread['d_pp'].mean()):.4f} "
                  f"| {float(spread['d_aa'].mean()):.4f} | {inside} | {largest} |")
            edges = torch.linspace(0, 1, 11)
            bins = torch.bucketize(mean_p.flatten(), edges[1:-1])
            reliability[mode] = {int(b): float(mean_a.flatten()[bins == b].mean()) for b in bins.unique()}
    print("\nreliability: the raters' mean mean(A) per bin of mean(P)\n")
    print("| outputs | " + " | ".join(f"{b / 10:.1f}-{(b + 1) / 10:.1f}" for b in range(10)) + " |")
    print("|---" * 11 + "|")
    for mode, table in reliability.items():
        print(f"| {mode} | " + " | ".join(f"{table[b]:.3f}" if b in table else "" for b in range(10)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle-roots", nargs="+", required=True, type=Path)
    parser.add_argument("--qubiq-root", default=str(REPO.parent / "shared" / "data" / "qubiq_brain_growth"))
    parser.add_argument("--data-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "multirater_monai", "qubiq-ablation"))
    args = parser.parse_args()
    if not Path(args.qubiq_root).is_dir():
        raise SystemExit(f"QUBIQ brain growth not found at {args.qubiq_root}; pass --qubiq-root.")
    missing = [str(r / "models" / "model.pt") for r in args.bundle_roots if not (r / "models" / "model.pt").is_file()]
    if missing:
        raise SystemExit(f"no trained model at {', '.join(missing)}: train ProSeg there first (compare_methods.py --dataset qubiq).")
    from monai.data import CacheDataset

    _, val, pre = qubiq_split(Path(args.data_dir), Path(args.qubiq_root))
    val_data = CacheDataset(val, pre, progress=False)
    print(f"# ProSeg calibration on the QUBIQ validation split ({len(val_data)} cases)")
    for root in args.bundle_roots:
        report(root, val_data)


if __name__ == "__main__":
    main()
