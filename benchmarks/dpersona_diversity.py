"""D-Persona Stage I on QUBIQ brain growth: does the diversity of the prior samples hold in every seed?

Trains Stage I with the bundle's CPU network (bundles/dpersona/configs/train.json: small U-Net,
latent 6, K = 10, alpha 1, beta 0.5, KL weight 1, Adam 1e-3, batch 16, flips and 90-degree
rotations)
on the training split of the comparison tables (cases split 0.6 / 0.1 / 0.3, seed 0) for each seed,
and prints, on the VALIDATION split (never the test split), the 16 prior samples' d_pp against the
raters' own d_aa, the GED, and along training the KL, the prior's sigma, how much the samples differ
(d_pp) and how much their logits differ (standard deviation across the samples, mean over pixels).

    python benchmarks/dpersona_diversity.py --seeds 0 1 2 --steps 200 [--variant paper]

Variants (``--variant``): ``paper`` (the bundle as it is) and the switches this script adds for the
diagnosis (none changes the bundle): ``no-bound`` (beta 0: the plain Probabilistic U-Net with
D-Persona's posterior on the rater stack) and ``per-sample-dice`` (the per-sample Dice of eqs. 4-5
that the bundle used before issue 18).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from proseg_ablation import fit_steps, qubiq_loaders  # noqa: E402  (the same split, loader and loop)

VARIANTS = {"paper": {}, "no-bound": {"beta": 0.0}, "per-sample-dice": {}}


def per_sample_dice(net) -> None:
    """The Dice before issue 18: MONAI's per-sample DiceLoss for eqs. 4 and 5 (empty masks do not train)."""
    from monai.losses import DiceLoss

    from multirater_monai.losses import BoundLoss

    net._losses["seg"] = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    net._losses["bound"] = BoundLoss(dice=DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5))


def cpu_network(**overrides):
    from multirater_monai.networks import BackboneConfig, DPersona

    backbone = BackboneConfig(encoder="small", feature_channels=16, channels=[16, 32, 64, 128])
    settings = dict(num_raters=7, latent_dim=6, num_samples=16, bank_size=100, num_bound_samples=10,
                    alpha=1.0, beta=0.5, beta_kl=1.0, l2_weight=1e-5)
    return DPersona.build(backbone=backbone, **{**settings, **overrides})


def validation_terms(net, val_data) -> dict:
    from monai.data import DataLoader

    from multirater_monai.metrics.set_metrics import generalized_energy_distance

    out = {"d_pp": [], "d_aa": [], "ged": [], "logit_spread": [], "sigma": []}
    with torch.no_grad():
        for item in DataLoader(val_data, batch_size=8):
            logits = net.eval()(item["image"])
            terms = generalized_energy_distance(torch.sigmoid(logits), item["label"], item.get("rater_mask"),
                                                return_terms=True)
            for k in ("d_pp", "d_aa", "ged"):
                out[k].append(terms[k])
            out["logit_spread"].append(logits.std(1).mean((-1, -2)))  # how much z moves the logits
            out["sigma"].append(net.prior.encode(item["image"])[1].exp().mean(1))
    return {k: float(torch.cat(v).mean()) for k, v in out.items()}


def run(seed: int, steps: int, variant: str, data_dir: Path, qubiq_root: Path, log_every: int) -> dict:
    loader, val_data = qubiq_loaders(seed, data_dir, qubiq_root)
    net = cpu_network(**VARIANTS[variant])
    if variant == "per-sample-dice":
        per_sample_dice(net)
    optimizer = torch.optim.Adam(net.parameters_to_train(1), lr=1e-3)
    start = time.time()

    def log(step: int, mean: dict) -> None:
        val = validation_terms(net, val_data)
        print(f"  [{variant} seed {seed}] step {step}: " + " ".join(f"{k} {mean[k]:.4f}" for k in ("kl", "seg", "bound"))
              + " | val " + " ".join(f"{k} {v:.3f}" for k, v in val.items())
              + f" ({time.time() - start:.0f} s)", flush=True)

    fit_steps(net, loader, optimizer, steps, log_every, log)
    return {"seed": seed, "variant": variant, **validation_terms(net, val_data), "minutes": (time.time() - start) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="200 = the bundle's 100 epochs of 20 cases, batch 16")
    parser.add_argument("--variant", default="paper", choices=sorted(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--data-dir", default="/tmp/dpersona_diversity_data")
    parser.add_argument("--qubiq-root", default=str(REPO.parent / "shared" / "data" / "qubiq_brain_growth"))
    args = parser.parse_args()
    if not Path(args.qubiq_root).is_dir():
        raise SystemExit(f"QUBIQ brain growth not found at {args.qubiq_root}; pass --qubiq-root.")
    torch.set_num_threads(args.threads)
    print(f"# D-Persona Stage I diversity on QUBIQ (validation split), {args.steps} steps, variant {args.variant}; "
          f"CPU: {platform.processor() or platform.machine()}, {args.threads} threads")
    rows = [run(s, args.steps, args.variant, Path(args.data_dir), Path(args.qubiq_root), args.log_every)
            for s in args.seeds]
    print("\n| variant | seed | d_pp | d_aa | d_pp / d_aa | GED | prior sigma | logit spread | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | {r['d_pp']:.3f} | {r['d_aa']:.3f} | {r['d_pp'] / r['d_aa']:.2f} | "
              f"{r['ged']:.3f} | {r['sigma']:.3f} | {r['logit_spread']:.3f} | {r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
