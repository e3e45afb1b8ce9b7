"""Which part of a trained MR-Net follows the raters: soft Dice of each head's output on synthetic2's test split.

For the equal-weight vector and each one-hot vector, the soft Dice (thresholds 0.1 ... 0.9, per image, mean
over the images, as the 'Mean Voting' / 'Average' table) of the refined output (what the bundle reports),
the coarse output (before the refinement), and the reconstruction head's per-rater outputs (one output per
rater, like MH-UNet's heads). Issue 13: in bundle 0.2.0 the reconstruction followed the raters far better
than the vector-conditioned output of the same network, so the backbone was not what held MR-Net back.

    python benchmarks/mrnet_parts.py --root runs/syn2/MR-Net/seed0 --data runs/syn2/data \
        --set network_def#rater_readout=false --set network_def#fused_loss='"dice+bce"'

``--root`` is a ``compare_methods.py --dataset synthetic2`` bundle root (``models/model.pt``), ``--data`` its
data folder, ``--set KEY=JSON`` a config override the run was trained with.
"""

from __future__ import annotations

import argparse
import json

import torch
from monai.bundle import ConfigParser

THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)


def soft_dice(prob: torch.Tensor, target: torch.Tensor) -> float:
    """Soft Dice of one image's probability map against a (soft) target, over :data:`THRESHOLDS`."""
    values = []
    for t in THRESHOLDS:
        a, b = (prob > t).float(), (target > t).float()
        values.append(((2 * (a * b).sum() + 1e-6) / (a.sum() + b.sum() + 1e-6)).item())
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", action="append", default=[], help="KEY=JSON config override")
    args = parser.parse_args()
    config = ConfigParser()
    config.read_config("bundles/mrnet/configs/train.json")
    overrides = {"dataset_name": "synthetic", "dataset_dir": args.data, "num_structures": 2,
                 "rank_raters_by_area": False, "intensity_range": [0, 1], "device": "$torch.device('cpu')",
                 "dataset_options": {"num_samples": 160, "num_raters": 4, "num_structures": 2, "size": 64, "seed": 0},
                 "validate#datalist_key": "test"}
    overrides.update({k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)})
    for key, value in overrides.items():
        config[key] = value
    net = config.get_parsed_content("network")
    net.load_state_dict(torch.load(f"{args.root}/models/model.pt", weights_only=True))
    net.eval()
    raters, structures = net.num_raters, net.num_structures
    scores: dict[tuple[str, int], list[float]] = {}
    with torch.no_grad():
        for batch in config.get_parsed_content("validate#dataloader"):
            image, label = batch["image"], batch["label"].float()
            codes = net.fixed_codes.expand(image.shape[0], -1, -1)  # equal vector, then the one-hot ones
            refined, coarse, reconstruction = net.predict(net.backbone(image), codes)
            stack = label.reshape(image.shape[0], structures, raters, *label.shape[2:])
            rec = torch.sigmoid(reconstruction[:, 0]).reshape(stack.shape)  # the equal vector's reconstruction
            for i in range(image.shape[0]):
                for k in range(structures):
                    mean_vote = stack[i, k].mean(0)
                    parts = {"MV refined": (torch.sigmoid(refined[i, 0, k]), mean_vote),
                             "MV coarse": (torch.sigmoid(coarse[i, 0, k]), mean_vote),
                             "MV reconstruction mean": (rec[i, k].mean(0), mean_vote)}
                    for r in range(raters):
                        target = stack[i, k, r]
                        parts[f"A{r + 1} refined"] = (torch.sigmoid(refined[i, 1 + r, k]), target)
                        parts[f"A{r + 1} coarse"] = (torch.sigmoid(coarse[i, 1 + r, k]), target)
                        parts[f"A{r + 1} reconstruction"] = (rec[i, k, r], target)
                    for name, (prob, target) in parts.items():
                        scores.setdefault((name, k), []).append(soft_dice(prob, target))
    for k in range(structures):
        row = {name: sum(v) / len(v) for (name, kk), v in scores.items() if kk == k}
        for part in ("refined", "coarse", "reconstruction"):
            row[f"Average {part}"] = sum(row[f"A{r + 1} {part}"] for r in range(raters)) / raters
        print(f"structure {k + 1}: " + "  ".join(f"{name} {value:.3f}" for name, value in row.items()))


if __name__ == "__main__":
    main()
