"""ProSeg on QUBIQ brain growth: which difference from the paper decides whether it learns.

Trains ProSeg variants for ``--steps`` Adam steps (batch 16, the bundle's CPU network and learning
rate, flips and 90-degree rotations; 200 steps = the 100 epochs of the comparison tables) on the
training split of the comparison tables (cases split 0.6 / 0.1 / 0.3, seed 0) and prints, per variant,
the personalized Dice_mean on the VALIDATION split (never the test split) with two decodings of z:
the mean of q(z | x) (the bundle's personalized output) and the mean probability over 16 draws of z
(eq. 10's marginal), with the final spread of q(z | x) and the classifier's loss. Variants:

* ``paper-init``: PyTorch's default initialisation of the log-sigma head (sigma about 1 at the start);
* ``narrow-z``: q(z | x) starts at sigma 0.05 (the bundle's default, ``initial_z_sigma``), and q(tau | r)
  at each rater's corner (``initial_tau_peak`` 10, the default since 0.5.0; before it the rows below
  that do not set tau's start had the random start of ``narrow-z+random-tau``);
* ``narrow-z+random-tau``: q(tau | r) from the class embedding's random start (``initial_tau_peak=None``,
  the default before 0.5.0);
* ``narrow-z+tau10``: also q(tau | r) starts concentrated (alpha about 10 per entry, candidate (c));
* ``narrow-z+class-unscaled``: the rater CE with weight 1 instead of 1/P (candidate (d));
* ``narrow-z+kl-sum``: the KL of Z summed over z's channels instead of averaged (candidate (e));
* ``narrow-z+z16``: z of 16 channels instead of 4;
* ``narrow-z+tau10+lr3e-3``: learning rate 3e-3 (the U-Net bundles') instead of 1e-3;
* ``narrow-z+z1``: z of one channel, the paper's "Z 128 x 128" read literally (the KL per pixel is then
  the paper's, as with the bundle's mean over 4 channels, but z carries one value per pixel);
* ``narrow-z+hidden32``: the predictor and the image decoder with 32 channels instead of 16;
* ``narrow-z+tau-lr``: the class embedding of q(tau | r) trained at learning rate 0.05 (the rest 1e-3):
  Adam moves a parameter by about its learning rate per step, so in 200 steps at 1e-3 the concentrations
  of q(tau | r) move by about 0.1 and tau stays at its random initialisation;
* ``narrow-z+dilated``: the predictor's two 3x3 convolutions dilated 1 and 3 (receptive field 9 x 9
  instead of 5 x 5 on z, the same multiply-adds): more noisy z values per output pixel to average;
* ``narrow-z+kl-warmup``: the weight of the KL of Z rises linearly from 0 to 1 over the first 100 steps
  (``kl_z_warmup_steps``), so q(z | x) stays narrow while the predictor learns to read z;
* ``narrow-z+tau-distinct``: q(tau | r) starts at Dir(1, ..., 10, ..., 1) with the 10 at entry r: each
  rater's draws of tau lie near their own corner of the simplex, so the classifier and the predictor can
  tell the raters apart from the first step (candidate (c) with distinct, not random, concentrations);
* ``narrow-z+recon-std``: p(x | z_i) reconstructs the image standardized per image (zero mean, unit
  variance, the paper's NPC preprocessing, App. C.1.1; ``recon_target``) instead of the [0, 1] window, whose
  variance (about 0.05 on QUBIQ) makes the image term 20 times lighter against the KL of Z;
* ``rater-blind``: no tau and no Z (``use_tau=False, use_z=False``): the same network as a plain
  BCE segmenter, every rater's mask a target.

    python benchmarks/proseg_ablation.py [--variants paper-init narrow-z ...] [--steps 200] [--seed 0]

One variant takes 6-12 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "paper-init": dict(initial_z_sigma=None),
    "narrow-z": dict(),
    "narrow-z+random-tau": dict(initial_tau_peak=None),
    "narrow-z+tau10": dict(tau_init=10.0),
    "narrow-z+class-unscaled": dict(class_unscaled=True),
    "narrow-z+kl-sum": dict(kl_sum_channels=True),
    "narrow-z+z16": dict(tau_init=10.0, z_channels=16),
    "narrow-z+tau10+lr3e-3": dict(tau_init=10.0, lr=3e-3),
    "narrow-z+z1": dict(z_channels=1),
    "narrow-z+hidden32": dict(hidden=32),
    "narrow-z+tau-lr": dict(tau_lr=0.05),
    "narrow-z+dilated": dict(predictor_dilation=(1, 3)),
    "narrow-z+kl-warmup": dict(kl_z_warmup_steps=100),
    "narrow-z+tau-distinct": dict(tau_distinct=10.0),
    "narrow-z+rater-encoders": dict(rater_encoders=True),
    "narrow-z+recon-std": dict(recon_target="standardized"),
    "rater-blind": dict(use_tau=False, use_z=False),
}


# the bundle's CPU network (bundles/proseg/configs/train.json) for the 7 QUBIQ raters
CPU_NETWORK = dict(num_raters=7, tau_dim=8, z_channels=4, hidden=16)


def cpu_backbone():
    from multirater_monai.networks import BackboneConfig

    return BackboneConfig(encoder="small", feature_channels=16, channels=[16, 32, 64, 128])


def qubiq_split(data_dir: Path, qubiq_root: Path):
    """(training list, validation list, preprocessing) of the comparison tables' split (0.6 / 0.1 / 0.3, seed 0)."""
    import multirater_monai as mm

    datalist = mm.data.ensure_dataset("qubiq", data_dir, root=str(qubiq_root), split=[0.6, 0.1, 0.3], seed=0)
    pre = mm.transforms.MultiRaterPreprocessing(spatial_dims=2, num_raters=7, intensity_range=[0, 255], spatial_divisor=16)
    return (mm.data.load_multirater_datalist(datalist, "training", num_raters=7),
            mm.data.load_multirater_datalist(datalist, "validation", num_raters=7), pre)


def qubiq_loaders(seed: int, data_dir: Path, qubiq_root: Path):
    """Seeded (training loader with flips and 90-degree rotations, batch 16; validation data set)."""
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose, RandFlipd, RandRotate90d
    from monai.utils import set_determinism

    set_determinism(seed)
    train, val, pre = qubiq_split(data_dir, qubiq_root)
    augment = Compose([pre, RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
                       RandFlipd(["image", "label"], prob=0.5, spatial_axis=1),
                       RandRotate90d(["image", "label"], prob=0.5, max_k=3)])
    loader = DataLoader(CacheDataset(train, augment, progress=False), batch_size=16, shuffle=True)
    return loader, CacheDataset(val, pre, progress=False)


def fit_steps(net, loader, optimizer, steps: int, log_every: int, on_log) -> list[dict]:
    """``steps`` optimiser steps of ``net.training_objective`` over ``loader`` (epochs repeat as needed);
    every ``log_every`` steps and at the end, ``on_log(step, mean of each term over the window)``.
    Returns every step's terms."""
    step, history = 0, []
    while step < steps:
        for batch in loader:
            terms = net.train().training_objective(batch["image"], batch["label"], batch.get("rater_mask"))
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            step += 1
            history.append({k: float(v) for k, v in terms.items()})
            if step % log_every == 0 or step == steps:
                on_log(step, {k: float(np.mean([h[k] for h in history[-log_every:]])) for k in history[-1]})
            if step >= steps:
                break
    return history


def variant_class():
    from multirater_monai.networks import ProSeg

    class ProSegVariant(ProSeg):
        """ProSeg with the ablation switches of this script (none changes the bundle's network)."""

        def __init__(self, *args, tau_init=None, class_unscaled=False, kl_sum_channels=False,
                     predictor_dilation=None, tau_distinct=None, **kwargs):
            super().__init__(*args, **kwargs)
            if tau_distinct is not None:  # alpha_r = 1 + (tau_distinct - 1) e_r: rater r near corner r
                with torch.no_grad():
                    target = torch.ones(self.tau_embedding.weight.shape)
                    for r in range(self.num_raters):
                        target[r, r % self.tau_dim] = tau_distinct
                    self.tau_embedding.weight.copy_(torch.log(torch.expm1(target - 1e-3)))
            if predictor_dilation is not None:  # the two 3x3 convolutions of the predictor
                for conv, d in zip((self.predictor[0], self.predictor[2]), predictor_dilation):
                    conv.dilation, conv.padding = (d, d), (d, d)  # 2D (QUBIQ)
            if tau_init is not None:  # alpha ~ tau_init * U(0.5, 1.5) per entry: distinct, concentrated
                with torch.no_grad():
                    g = torch.Generator().manual_seed(0)
                    target = tau_init * (0.5 + torch.rand(self.tau_embedding.weight.shape, generator=g))
                    self.tau_embedding.weight.copy_(torch.log(torch.expm1(target)))
            self.class_unscaled, self.kl_sum_channels = class_unscaled, kl_sum_channels
            self.z_draws = 0

        def training_objective(self, image, label, rater_mask=None):
            out = super().training_objective(image, label, rater_mask)
            if self.kl_sum_channels:  # the loss holds the channel mean once: add C - 1 more
                out["loss"] = out["loss"] + (self.z_channels - 1) * out["kl_z"]
            if self.class_unscaled:  # the loss holds CE / P: make it CE
                out["loss"] = out["loss"] + (1 - 1 / float(label[0, 0].numel())) * out["classification"]
            return out

        def forward(self, image):
            if self.output_mode != "personalized" or not self.z_draws:
                return super().forward(image)
            mu, log_sigma = self._z_params(self.backbone(image))
            raters = torch.arange(self.num_raters)
            mu, sigma = self._per_output(mu, raters), torch.exp(self._per_output(log_sigma, raters))
            alpha = self.tau_concentration()
            tau = (alpha / alpha.sum(-1, keepdim=True)).unsqueeze(0).expand(mu.shape[0], -1, -1)
            probs = 0
            for _ in range(self.z_draws):  # eq. 10: the mean probability over draws of z
                probs = probs + torch.sigmoid(self._predict(mu + sigma * torch.randn_like(mu), tau))
            return torch.logit((probs / self.z_draws).clamp(1e-6, 1 - 1e-6))

    return ProSegVariant


def run_variant(name: str, steps: int, seed: int, data_dir: Path, qubiq_root: Path, log_every: int = 50) -> dict:
    from monai.data import DataLoader

    from multirater_monai.metrics.set_metrics import (dice_matrix, dice_per_rater_from_matrix,
                                                      generalized_energy_distance, soft_dice)

    def val_dice_mean() -> float:
        """Personalized Dice_mean (z = mean of q(z | x)) on the validation split."""
        was_training, net.z_draws = net.training, 0
        dice = []
        with torch.no_grad():
            for item in DataLoader(val_data, batch_size=8):
                pred = (net.eval()(item["image"]) > 0).float()
                dice.append(dice_per_rater_from_matrix(dice_matrix(pred, item["label"], item.get("rater_mask"))))
        net.train(was_training)
        return float(torch.cat(dice).mean())

    settings = dict(VARIANTS[name])
    lr = settings.pop("lr", 1e-3)
    tau_lr = settings.pop("tau_lr", None)
    loader, val_data = qubiq_loaders(seed, data_dir, qubiq_root)
    net = variant_class().build(backbone=cpu_backbone(), **{**CPU_NETWORK, "num_samples": 16, **settings})
    if tau_lr is None:
        optimizer = torch.optim.Adam(net.parameters_to_train(), lr=lr)
    else:
        tau_params = list(net.tau_embedding.parameters())
        rest = [p for p in net.parameters_to_train() if all(p is not q for q in tau_params)]
        optimizer = torch.optim.Adam([{"params": rest}, {"params": tau_params, "lr": tau_lr}], lr=lr)
    start, curve = time.time(), {}

    def log(step: int, mean: dict) -> None:
        curve[step] = val_dice_mean()  # when the masks leave the all-background answer
        print(f"  [{name}] step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in mean.items())
              + f" val Dice_mean {curve[step]:.3f} ({time.time() - start:.0f} s)", flush=True)

    history = fit_steps(net, loader, optimizer, steps, log_every, log)
    result = {"variant": name, "seed": seed, "steps": steps, "minutes": (time.time() - start) / 60,
              "val_dice_mean_by_step": curve}
    result["val_dice_mean_zmean"] = curve[steps]  # the last point of the curve: z = mean of q(z | x)
    net.eval()
    with torch.no_grad():
        net.z_draws = 16  # eq. 10: the mean probability over 16 draws of z
        torch.manual_seed(0)
        dice = []
        for item in DataLoader(val_data, batch_size=8):
            pred = (net(item["image"]) > 0).float()
            dice.append(dice_per_rater_from_matrix(dice_matrix(pred, item["label"], item.get("rater_mask"))))
        result["val_dice_mean_z16"] = float(torch.cat(dice).mean())
        # the personalized probabilities (z = mean), one pass: Dice_soft; the mean probability where every
        # rater marks foreground (a calibrated map gives ~1 there); d_pp of the R masks (how much the
        # raters' outputs differ; the raters' own d_aa is 0.233 on this split)
        net.z_draws = 0
        soft, inside, d_pp = [], [], []
        for item in DataLoader(val_data, batch_size=8):
            prob = torch.sigmoid(net(item["image"]))
            soft.append(soft_dice(prob, item["label"], item.get("rater_mask")))
            inside.append(prob.mean(1)[item["label"].min(1).values > 0.5])
            d_pp.append(generalized_energy_distance(prob, item["label"], item.get("rater_mask"), return_terms=True)["d_pp"])
        result["val_dice_soft"] = float(torch.cat(soft).mean())
        result["val_prob_in_consensus"] = float(torch.cat(inside).mean())
        result["val_d_pp_personalized"] = float(torch.cat(d_pp).mean())
        item = next(iter(DataLoader(val_data, batch_size=4)))
        mu, log_sigma = net._z_params(net.backbone(item["image"]))
        result["final_mean_abs_mu"] = float(mu.abs().mean())
        result["final_sigma"] = float(log_sigma.exp().mean())
    result["final_classification"] = float(np.mean([h["classification"] for h in history[-log_every:]]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qubiq-root", default=str(REPO.parent / "shared" / "data" / "qubiq_brain_growth"))
    parser.add_argument("--data-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "multirater_monai", "qubiq-ablation"))
    args = parser.parse_args()
    if not Path(args.qubiq_root).is_dir():
        raise SystemExit(f"QUBIQ brain growth not found at {args.qubiq_root}; pass --qubiq-root.")
    torch.set_num_threads(args.threads)
    print(f"# ProSeg ablation on QUBIQ (validation split), {args.steps} steps, seed {args.seed}; "
          f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    rows = []
    for variant in args.variants:
        rows.append(run_variant(variant, args.steps, args.seed, Path(args.data_dir), Path(args.qubiq_root)))
        print(json.dumps(rows[-1]), flush=True)  # each variant's result as soon as it is known
    print("\n| variant | val Dice_mean (z = mean) | val Dice_mean (16 z draws) | val Dice_soft | probability where all "
          "raters mark foreground | d_pp of the personalized masks | sigma of q(z\\|x) | mean \\|mu\\| | rater CE (ln 7 = 1.95) | min |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['val_dice_mean_zmean']:.4f} | {r['val_dice_mean_z16']:.4f} | {r['val_dice_soft']:.4f} | "
              f"{r['val_prob_in_consensus']:.3f} | {r['val_d_pp_personalized']:.3f} | {r['final_sigma']:.2f} | {r['final_mean_abs_mu']:.2f} | "
              f"{r['final_classification']:.3f} | {r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
