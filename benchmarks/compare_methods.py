"""Evidence table: the bundles side by side on one data set, same split, same training budget.

Each method is trained and evaluated through MONAI's own bundle commands (``run training``, then
``train.json + evaluate.json``), each in its own bundle root under ``--out``, and the rows of all
evaluation tables are gathered into one table (markdown printed, CSV and JSON saved):

* ``unet_fusion`` with majority vote, random rater per sample and STAPLE (rater-blind baselines),
  and with ``--per-rater`` one U-Net per rater (the papers' U-Net (A_k) rows);
* ``prob_unet`` with 10/30/50 samples;
* ``dpersona`` Stage I with 10/30/50 samples and Stage II;
* ``proseg`` personalized, personalized with 50 z samples, and prior mode with 50 samples; with
  ``--ablation`` also ProSeg without tau, without Z, and without both (the ProSeg paper's Table 2).

Budget: every method trains ``--epochs`` epochs (D-Persona: Stage I ``--epochs``, then Stage II
``--stage2-epochs`` on the frozen Stage I model, as the paper adds Stage II after Stage I).

    python benchmarks/compare_methods.py --dataset lidc-phantom --epochs 20 --stage2-epochs 10 --out runs/cmp_lidc
    python benchmarks/compare_methods.py --dataset qubiq --epochs 150 --stage2-epochs 100 --out runs/cmp_qubiq

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
COLUMNS = ["ged", "d_pa", "d_pp", "d_aa", "dice_soft", "dice_max", "dice_match"]


def data_overrides(dataset: str, out: Path, qubiq_root: Path) -> tuple[list[str], int]:
    """Bundle overrides selecting the data set, and its number of raters."""
    if dataset == "lidc-phantom":
        return [], 4
    if dataset == "qubiq":
        # 34 cases: 20 training, 4 validation, 10 test, so the test table is not 5 images
        options = {"root": str(qubiq_root), "split": [0.6, 0.1, 0.3], "seed": 0}
        return ["--dataset_name", "qubiq", "--dataset_dir", str(out / "data"), "--dataset_options", repr(options),
                "--num_raters", "7", "--rank_raters_by_area", "False", "--intensity_range", "[0,255]"], 7
    raise SystemExit(f"unknown --dataset {dataset}; choose lidc-phantom or qubiq")


def methods(num_raters: int, per_rater: bool, epochs: int, stage2_epochs: int, val_interval: int,
            ablation: bool = False) -> list[tuple]:
    """(label, bundle, overrides) per method."""
    common = ["--val_interval", str(val_interval)]
    runs = [
        ("U-Net (majority vote)", "unet_fusion", ["--fusion", "majority", "--epochs", str(epochs), *common]),
        ("U-Net (random rater)", "unet_fusion", ["--fusion", "random", "--epochs", str(epochs), *common]),
        ("U-Net (STAPLE)", "unet_fusion", ["--fusion", "staple", "--epochs", str(epochs), *common]),
    ]
    if per_rater:
        runs += [(f"U-Net (A{k + 1})", "unet_fusion", ["--fusion", "rater", "--fusion_rater", str(k),
                                                      "--epochs", str(epochs), *common]) for k in range(num_raters)]
    runs += [
        ("Prob. U-Net", "prob_unet", ["--epochs", str(epochs), *common]),
        ("D-Persona", "dpersona", ["--stage1_epochs", str(epochs), "--stage2_epochs", str(stage2_epochs), *common]),
        ("ProSeg", "proseg", ["--epochs", str(epochs), *common]),
    ]
    if ablation:
        runs += [(f"ProSeg without {name}", "proseg", [*switches, "--epochs", str(epochs), *common]) for name, switches in (
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
    doc = json.loads((root / "eval" / "metrics.json").read_text())
    if "rows" in doc:  # several settings (samples counts, stages); an ablation's label replaces the method name
        return [{**row, "method": row["setting"] if row["setting"].startswith(label)
                 else label + row["setting"][row["setting"].find(" ("):]} for row in doc["rows"]]
    return [{**doc["summary"], "method": label}]


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "N/A"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="lidc-phantom", choices=["lidc-phantom", "qubiq"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--stage2-epochs", type=int, default=10)
    parser.add_argument("--val-interval", type=int, default=2)
    parser.add_argument("--per-rater", action="store_true", help="also train one U-Net per rater")
    parser.add_argument("--ablation", action="store_true", help="also train ProSeg without tau, without Z, without both")
    parser.add_argument("--only", nargs="*", help="run only the methods whose label contains one of these words")
    parser.add_argument("--qubiq-root", default=str(REPO.parent / "shared" / "data" / "qubiq_brain_growth"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    overrides, num_raters = data_overrides(args.dataset, out, Path(args.qubiq_root))
    rater_cols = [f"dice_A{i + 1}" for i in range(num_raters)] + ["dice_mean"]
    rows, timings = [], []
    for label, name, extra in methods(num_raters, args.per_rater, args.epochs, args.stage2_epochs, args.val_interval,
                                       args.ablation):
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
        try:
            seconds = bundle(["run", "training", "--config_file", str(configs / "train.json"),
                              "--bundle_root", str(root), *overrides, *extra], log)
            bundle(["run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
                    "--bundle_root", str(root), *overrides, *extra], log)
        except RuntimeError as err:
            print(f"[compare] {label}: {err}", flush=True)
            rows.append({"method": f"{label}: FAILED"})
            continue
        timings.append((label, seconds))
        (root / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
        rows += evaluation_rows(root, label)
        print(f"[compare] {label}: trained in {seconds / 60:.1f} min", flush=True)

    header = ["method", *COLUMNS, *rater_cols]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join([row["method"]] + [fmt(row.get(c)) for c in header[1:]]) + " |" for row in rows]
    table = "\n".join(lines)
    command = "python " + " ".join(sys.argv)
    note = (f"command: {command}\ndata: {args.dataset}; training epochs {args.epochs} "
            f"(D-Persona: Stage I {args.epochs} + Stage II {args.stage2_epochs}); test split\n"
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
