"""How much of AVAP's generated kernels the rater code decides (issue 18, paper audit finding 4).

Eq. 5: the controller is ONE linear layer on ``GAP(F_img) || V_m``, so each generated parameter
vector splits exactly into a feature part ``W_f g`` (the same for every rater of an image), a code
part ``W_c V_m`` (the rater's own column) and the bias. For a trained AVAP bundle root this prints,
on the VALIDATION split of a comparison data set (never the test split):

* the size of the pooled features as the controller sees them (mean |entry|, after ``feature_norm``);
* the norms of the feature part and the code part of the generated parameters, and the share of
  the rater-to-rater spread of the kernels in their total size (0: every rater gets the same kernels);
* d_pp of the per-rater outputs (0 when they are identical) beside d_aa of the raters, per structure.

    python benchmarks/avap_controller_balance.py --dataset synthetic2 --bundle-roots runs/syn2/AVAP/seed0 \
        --bundle-args "--network_def#feature_norm layer"
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def parse_overrides(text: str) -> dict:
    """``"--a#b value --c value"`` -> ``{"a#b": value}`` with values read as Python literals where they are."""
    import ast

    words, out = shlex.split(text), {}
    for key, value in zip(words[::2], words[1::2]):
        try:
            out[key.lstrip("-")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.lstrip("-")] = value
    return out


def network_and_data(dataset: str, data_dir: Path, extra: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "avap" / "configs" / "train.json"))
    overrides = {"validate#datalist_key": "validation", "device": "$torch.device('cpu')"}
    if dataset == "synthetic2":  # the data of compare_methods.py --dataset synthetic2
        overrides.update({"dataset_name": "synthetic", "dataset_dir": str(data_dir), "num_structures": 2,
                          "dataset_options": {"num_samples": 160, "num_raters": 4, "num_structures": 2, "size": 64,
                                              "seed": 0},
                          "rank_raters_by_area": False, "intensity_range": [0, 1]})
    overrides.update(extra)
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("validate#dataloader")


def report(root: Path, net, loader) -> None:
    from multirater_monai.metrics.set_metrics import compute_set_metrics

    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    net.eval()
    head, num_raters, num_structures = net.preference_head, net.num_raters, net.num_structures
    weight = head.controller.weight.flatten(1)  # (generated, C + R) when both inputs are used
    c = head.in_channels if head.use_features else 0
    pooled_size, feature_part, code_part, spread_share = [], [], [], []
    spread = {k: [] for k in range(num_structures)}
    with torch.no_grad():
        for batch in loader:
            image, label = batch["image"], batch["label"]
            features = net.backbone(image)
            codes = net.rater_codes[None].expand(image.shape[0], num_raters, num_raters)
            params = head.generate_filters(features, codes)  # (B, R, generated)
            if head.use_features:
                g = features.flatten(2).mean(2)
                if head.feature_norm != "none":
                    g = torch.nn.functional.layer_norm(g, [c])
                if head.feature_norm == "unit":
                    g = g / c**0.5
                pooled_size.append(g.abs().mean(1))
                feature_part.append((g @ weight[:, :c].T).norm(dim=1))
            if head.use_code:
                code_part.append(weight[:, c:].T.norm(dim=1).mean().expand(image.shape[0]))
            spread_share.append((params - params.mean(1, keepdim=True)).norm(dim=2).mean(1) / params.norm(dim=2).mean(1))
            net.set_output_mode("personalized")
            prob = torch.sigmoid(net(image)).reshape(image.shape[0], num_structures, num_raters, *image.shape[2:])
            net.set_output_mode("all")
            raters = label.reshape(prob.shape)
            present = batch.get("rater_mask")
            if present is not None:  # (B, R) or (B, R * K): missing readers are left out of d_aa, as in evaluate.json
                present = present.bool().reshape(image.shape[0], -1, num_raters).expand(-1, num_structures, -1)
            for k in range(num_structures):
                mask_k = None if present is None else present[:, k]
                metrics = compute_set_metrics(prob[:, k], raters[:, k], mask_k)
                spread[k].append(torch.stack([metrics["d_pp"], metrics["d_aa"]], 1))

    def mean(values):
        return float(torch.cat(values).mean()) if values else float("nan")

    cells = [f"{mean(pooled_size):.3f}", f"{mean(feature_part):.3f}", f"{mean(code_part):.3f}", f"{mean(spread_share):.3f}"]
    for k in range(num_structures):
        both = torch.cat(spread[k]).mean(0)
        cells += [f"{float(both[0]):.3f}", f"{float(both[1]):.3f}"]
    print(f"| {root} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic2", choices=["synthetic2", "lidc-phantom"])
    parser.add_argument("--bundle-roots", nargs="+", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="synthetic2: the comparison's data folder (default: <first root>/../../data)")
    parser.add_argument("--bundle-args", default="", help="overrides the roots were trained with, as for compare_methods")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_dir = args.data_dir or args.bundle_roots[0].resolve().parents[1] / "data"
    net, loader = network_and_data(args.dataset, data_dir, parse_overrides(args.bundle_args))
    structures = net.num_structures
    head = ["bundle root", "mean abs GAP(F) entry (as fed)", "feature part norm", "code part norm",
            "rater spread / kernel norm"] + [f"{w} (structure {k + 1})" for k in range(structures) for w in ("d_pp", "d_aa")]
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    for root in args.bundle_roots:
        report(root, net, loader)


if __name__ == "__main__":
    main()
