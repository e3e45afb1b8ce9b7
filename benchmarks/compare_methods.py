"""Evidence tables: the bundles side by side on one data set, same split, same training budget.

Every row is a bundle run: each method is trained and evaluated through MONAI's own bundle commands
(``run training``, then ``train.json + evaluate.json``), each in its own bundle root under ``--out``,
with the same overrides for every bundle (the shared config vocabulary: ``epochs``, ``stage2_epochs``,
``val_interval``, the data set keys), and the rows of all evaluation tables are gathered into one
table (markdown printed, CSV and JSON saved). Two suites:

* ``--suite dpersona`` (the D-Persona and ProSeg papers' comparison): ``unet_fusion`` with majority vote,
  random rater and STAPLE (and with ``--per-rater`` one U-Net per rater), ``prob_unet`` with 10/30/50
  samples, ``dpersona`` Stage I with 10/30/50 samples and Stage II, ``proseg`` personalized, personalized
  with 50 samples and prior; ``--ablation`` adds ProSeg without tau / Z / both (ProSeg Table 2).
* ``--suite avap`` (the AVAP paper's Tables II and IV): ``avap``, its controller ablations "code only"
  and "features only", ``mh_unet``, and ``unet_fusion`` with majority vote and with each rater
  (M1..MR). Every method is scored by the same 'Mean Voting' / 'Average' table
  (``CalibratedPersonalizedSaver``; a U-Net's calibrated map is its probability, and it gives every
  rater the same mask). The per-rater row is assembled from the R single-rater runs: its 'Average' is
  the mean over raters r of run r's soft Dice against rater r (its 'Mean Voting' would need the R
  networks' outputs on one image and is not reported).

Budget: every method trains ``--epochs`` epochs; two-stage methods then train ``--stage2-epochs`` more
(as the D-Persona paper adds Stage II after Stage I). With ``--equal-steps`` one-stage methods train
``--epochs + --stage2-epochs``, so every row has the same number of optimiser steps (the AVAP paper's
comparison of one model against per-rater models).

    python benchmarks/compare_methods.py --dataset lidc-phantom --epochs 20 --stage2-epochs 10 --out runs/cmp_lidc
    python benchmarks/compare_methods.py --suite avap --dataset qubiq --epochs 100 --stage2-epochs 50 --out runs/avap_qubiq
    python benchmarks/compare_methods.py --suite avap --dataset synthetic2 --epochs 20 --stage2-epochs 10 --out runs/avap_syn2

A method whose run fails is reported with its error and the others go on. A method whose bundle
root under ``--out`` already holds an evaluation (``eval/metrics.json``) is not run again, so an
interrupted comparison resumes where it stopped (delete a method's folder to redo it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = {"dpersona": ["ged", "d_pa", "d_pp", "d_aa", "dice_soft", "dice_max", "dice_match"],
           "avap": ["mean_voting", "average", "ged", "dice_soft", "dice_match", "dice_mean"]}
# the AVAP suite scores every method with the calibrated + per-rater table (evaluation run only)
AVAP_TABLE = ("[{'_target_': 'multirater_monai.metrics.CalibratedPersonalizedSaver', 'num_raters': '@num_raters', "
              "'structure_names': '@structure_names', 'rater_names': '@rater_names', 'print_table': False}]")


def data_overrides(dataset: str, out: Path, qubiq_root: Path) -> tuple[list[str], int, int]:
    """Bundle overrides selecting the data set, its number of raters and of structures."""
    if dataset == "lidc-phantom":
        return [], 4, 1
    if dataset == "qubiq":
        # 34 cases: 20 training, 4 validation, 10 test, so the test table is not 5 images
        options = {"root": str(qubiq_root), "split": [0.6, 0.1, 0.3], "seed": 0}
        return ["--dataset_name", "qubiq", "--dataset_dir", str(out / "data"), "--dataset_options", repr(options),
                "--num_raters", "7", "--rank_raters_by_area", "False", "--intensity_range", "[0,255]"], 7, 1
    if dataset == "synthetic2":
        # two structures (lesion + core), four raters of distinct styles
        options = {"num_samples": 160, "num_raters": 4, "num_structures": 2, "size": 64, "seed": 0}
        return ["--dataset_name", "synthetic", "--dataset_dir", str(out / "data"), "--dataset_options", repr(options),
                "--num_structures", "2", "--rank_raters_by_area", "False", "--intensity_range", "[0,1]"], 4, 2
    raise SystemExit(f"unknown --dataset {dataset}; choose lidc-phantom, qubiq or synthetic2")


def methods(suite: str, num_raters: int, per_rater: bool, ablation: bool) -> list[tuple[str, str, list[str]]]:
    """(label, bundle, method overrides) per row of the suite."""
    if suite == "avap":
        runs = [("AVAP", "avap", []),
                ("AVAP code only", "avap", ["--network_def#use_features", "False"]),
                ("AVAP features only", "avap", ["--network_def#use_rater_code", "False"]),
                ("MH-UNet", "mh_unet", []),
                ("U-Net (majority vote)", "unet_fusion", ["--fusion", "majority"])]
        return runs + [(f"U-Net (A{k + 1})", "unet_fusion", ["--fusion", "rater", "--fusion_rater", str(k)])
                       for k in range(num_raters)]
    runs = [("U-Net (majority vote)", "unet_fusion", ["--fusion", "majority"]),
            ("U-Net (random rater)", "unet_fusion", ["--fusion", "random"]),
            ("U-Net (STAPLE)", "unet_fusion", ["--fusion", "staple"])]
    if per_rater:
        runs += [(f"U-Net (A{k + 1})", "unet_fusion", ["--fusion", "rater", "--fusion_rater", str(k)])
                 for k in range(num_raters)]
    runs += [("Prob. U-Net", "prob_unet", []), ("D-Persona", "dpersona", []), ("ProSeg", "proseg", [])]
    if ablation:
        runs += [(f"ProSeg without {name}", "proseg", switches) for name, switches in (
            ("tau", ["--use_tau", "False"]), ("Z", ["--use_z", "False"]),
            ("tau and Z", ["--use_tau", "False", "--use_z", "False"]))]
    return runs


def bundle(args: list[str], log: Path) -> float:
    """Run ``python -m monai.bundle *args`` with its output in ``log``; returns seconds, raises on failure."""
    start = time.perf_counter()
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, stdout=f,
                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"monai.bundle {args[0]} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def evaluation_rows(root: Path, label: str) -> list[dict]:
    """The rows of a bundle's evaluation table; an ablation's label replaces the method name."""
    doc = json.loads((root / "eval" / "metrics.json").read_text())
    rows = []
    for row in doc["rows"]:
        setting = row["setting"]
        suffix = setting[setting.find(" ("):] if " (" in setting and len(doc["rows"]) > 1 else ""
        rows.append({**row, "method": setting if setting.startswith(label) else label + suffix})
    return rows


def per_rater_row(rows: list[dict], num_raters: int, structures: list[str]) -> dict | None:
    """The 'U-Net per rater' row of the AVAP suite from the R runs 'U-Net (Ak)': run k against rater k."""
    by_label = {row["method"]: row for row in rows}
    runs = [by_label.get(f"U-Net (A{k + 1})") for k in range(num_raters)]
    if any(run is None for run in runs):
        return None
    row = {"method": "U-Net per rater (M1..MR)"}
    for prefix in structures:
        values = [run.get(f"{prefix}average_A{k + 1}") for k, run in enumerate(runs)]
        row[f"{prefix}average"] = None if None in values else sum(values) / num_raters
        row[f"{prefix}mean_voting"] = None
    return row


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "N/A"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="dpersona", choices=sorted(COLUMNS))
    parser.add_argument("--dataset", default="lidc-phantom", choices=["lidc-phantom", "qubiq", "synthetic2"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--stage2-epochs", type=int, default=10)
    parser.add_argument("--val-interval", type=int, default=2)
    parser.add_argument("--per-rater", action="store_true", help="dpersona suite: also train one U-Net per rater")
    parser.add_argument("--ablation", action="store_true", help="dpersona suite: also ProSeg without tau, Z, both")
    parser.add_argument("--equal-steps", action="store_true",
                        help="one-stage methods train --epochs + --stage2-epochs (same steps as two-stage ones)")
    parser.add_argument("--only", nargs="*", help="run only the methods whose label contains one of these words")
    parser.add_argument("--qubiq-root", default=str(REPO.parent / "shared" / "data" / "qubiq_brain_growth"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    data, num_raters, _ = data_overrides(args.dataset, out, Path(args.qubiq_root))
    evaluation = ["--validate#handlers", AVAP_TABLE] if args.suite == "avap" else []
    rows, timings = [], []
    for label, name, extra in methods(args.suite, num_raters, args.per_rater, args.ablation):
        if args.only and not any(word.lower() in label.lower() for word in args.only):
            continue
        root = out / label.replace(" ", "_").replace("(", "").replace(")", "")
        root.mkdir(exist_ok=True)
        configs = REPO / "bundles" / name / "configs"
        log = root / "log.txt"
        if (root / "eval" / "metrics.json").is_file():
            print(f"[compare] {label}: evaluated before in {root}; reusing it", flush=True)
            rows += evaluation_rows(root, label)
            if (root / "train_seconds.txt").is_file():
                timings.append((label, float((root / "train_seconds.txt").read_text())))
            continue
        print(f"[compare] {label}: training ({name}) -> {root}", flush=True)
        two_stage = "stage2" in json.loads((configs / "train.json").read_text())
        epochs = args.epochs + (args.stage2_epochs if args.equal_steps and not two_stage else 0)
        budget = ["--epochs", str(epochs), "--stage2_epochs", str(args.stage2_epochs), "--val_interval", str(args.val_interval)]
        common = ["--bundle_root", str(root), *data, *budget, *extra]
        try:
            seconds = bundle(["run", "training", "--config_file", str(configs / "train.json"), *common], log)
            bundle(["run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
                    *common, *evaluation], log)
        except RuntimeError as err:
            print(f"[compare] {label}: {err}", flush=True)
            rows.append({"method": f"{label}: FAILED"})
            continue
        timings.append((label, seconds))
        (root / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
        rows += evaluation_rows(root, label)
        print(f"[compare] {label}: trained in {seconds / 60:.1f} min", flush=True)

    if args.suite == "avap":
        # the table's keys are prefixed by the structure's name when there are several ("core_mean_voting")
        first = next((row for row in rows if "setting" in row), {})
        structures = [key[: -len("mean_voting")] for key in first if key.endswith("mean_voting")] or [""]
        extra_row = per_rater_row(rows, num_raters, structures)
        if extra_row is not None:
            rows.append(extra_row)
        columns = [f"{s}{c}" for s in structures for c in COLUMNS["avap"]]
        columns += [f"{s}average_A{k + 1}" for s in structures for k in range(num_raters)]
    else:
        columns = COLUMNS["dpersona"] + [f"dice_A{i + 1}" for i in range(num_raters)] + ["dice_mean"]
    header = ["method", *columns]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join([row["method"]] + [fmt(row.get(c)) for c in header[1:]]) + " |" for row in rows]
    table = "\n".join(lines)
    command = "python " + " ".join(sys.argv)
    budget_text = (f"one-stage methods {args.epochs + args.stage2_epochs} epochs, two-stage {args.epochs} + "
                   f"{args.stage2_epochs}" if args.equal_steps else
                   f"{args.epochs} (+ {args.stage2_epochs} for the second stage of two-stage methods)")
    note = (f"command: {command}\nsuite: {args.suite}; data: {args.dataset}; training epochs {budget_text}; test split\n"
            "training time (min): " + ", ".join(f"{label} {s / 60:.1f}" for label, s in timings))
    print("\n" + note + "\n\n" + table)
    (out / "compare.md").write_text(note + "\n\n" + table + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[row.get(c) for c in header] for row in rows])
    (out / "compare.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
