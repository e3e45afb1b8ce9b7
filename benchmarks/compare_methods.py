"""Evidence tables: the bundles side by side on one data set, same split, same training budget.

Every row is a bundle run: each method is trained and evaluated through MONAI's own bundle commands
(``run training``, then ``train.json + evaluate.json``), each in its own bundle root under ``--out``,
with the same overrides for every bundle (the shared config vocabulary: ``epochs``, ``stage2_epochs``,
``val_interval``, the data set keys), and the rows of all evaluation tables are gathered into one
table (markdown printed, CSV and JSON saved). Two suites:

* ``--suite dpersona`` (the D-Persona and ProSeg papers' comparison): ``unet_fusion`` with majority vote,
  random rater and STAPLE (and with ``--per-rater`` one U-Net per rater), ``prob_unet`` with 10/30/50
  samples, ``dpersona`` Stage I with 10/30/50 samples and Stage II, ``proseg`` personalized, personalized
  with 50 samples and prior, and the baselines of the papers' tables ``cm_global``, ``cm_pixel`` (per-rater
  outputs, and the true label p for every rater), ``pionono`` (personalized, mixture samples), ``tab`` and ``padl``
  (personalized, consensus mean, consensus samples) and ``mrnet`` (its one-hot per-rater outputs); ``--ablation`` adds
  ProSeg without tau / Z / both (ProSeg Table 2) and with
  one image encoder head per rater instead of one shared by the raters.
* ``--suite avap`` (the AVAP paper's Tables II and IV): ``avap``, its controller ablations "code only"
  and "features only", ``mh_unet``, ``padl``, ``tab``, ``mrnet``, and ``unet_fusion`` with majority vote and with each rater
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

Evidence (``--seeds 0 1 2``): every row is trained and evaluated once per seed (bundle roots
``--out/<method>/seed<k>``) and reported as mean ± std over the seeds; below the table, each of the
papers' claims (:data:`CLAIMS`) gets the paired bootstrap 95 % interval over the test images of
the difference between its two rows and a verdict (holds / fails / inconclusive), see
``multirater_monai.metrics.evidence``.

A method whose run fails is reported with its error and the others go on. A method whose bundle
root under ``--out`` already holds an evaluation (``eval/metrics.json``) is not run again, so an
interrupted comparison resumes where it stopped (delete a method's folder to redo it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multirater_monai.metrics.evidence import (  # noqa: E402
    claim_verdict,
    mean_and_std,
    paired_bootstrap_interval,
    per_image_values,
)
COLUMNS = {"dpersona": ["ged", "d_pa", "d_pp", "d_aa", "dice_soft", "dice_max", "dice_match"],
           "avap": ["mean_voting", "average", "ged", "dice_soft", "dice_match", "dice_mean"]}
# the AVAP suite scores every method with the calibrated + per-rater table (evaluation run only)
AVAP_TABLE = ("[{'_target_': 'multirater_monai.metrics.CalibratedPersonalizedSaver', 'num_raters': '@num_raters', "
              "'structure_names': '@structure_names', 'rater_names': '@rater_names', 'print_table': False}]")

# PADL's and TAB's settings with a calibrated map and per-rater outputs (their sample settings have neither)
PADL_AVAP_SETTINGS = ("[{'name': 'PADL (personalized)', 'checkpoint': '@checkpoint', 'output_mode': 'personalized'}, "
                      "{'name': 'PADL (global mean)', 'checkpoint': '@checkpoint', 'output_mode': 'consensus'}]")
TAB_AVAP_SETTINGS = ("[{'name': 'TAB (personalized)', 'checkpoint': '@checkpoint', 'output_mode': 'personalized'}, "
                     "{'name': 'TAB (consensus mean)', 'checkpoint': '@checkpoint', 'output_mode': 'consensus'}]")


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
                ("PADL", "padl", ["--evaluation_settings", PADL_AVAP_SETTINGS]),
                ("TAB", "tab", ["--evaluation_settings", TAB_AVAP_SETTINGS]),
                ("MR-Net", "mrnet", []),
                ("U-Net (majority vote)", "unet_fusion", ["--fusion", "majority"])]
        return runs + [(f"U-Net (A{k + 1})", "unet_fusion", ["--fusion", "rater", "--fusion_rater", str(k)])
                       for k in range(num_raters)]
    runs = [("U-Net (majority vote)", "unet_fusion", ["--fusion", "majority"]),
            ("U-Net (random rater)", "unet_fusion", ["--fusion", "random"]),
            ("U-Net (STAPLE)", "unet_fusion", ["--fusion", "staple"])]
    if per_rater:
        runs += [(f"U-Net (A{k + 1})", "unet_fusion", ["--fusion", "rater", "--fusion_rater", str(k)])
                 for k in range(num_raters)]
    runs += [("Prob. U-Net", "prob_unet", []), ("D-Persona", "dpersona", []), ("ProSeg", "proseg", []),
             ("CM-Global", "cm_global", []), ("CM-Pixel", "cm_pixel", []), ("Pionono", "pionono", [])]
    runs += [("TAB", "tab", []), ("PADL", "padl", [])]
    runs += [("MR-Net", "mrnet", [])]
    if ablation:
        runs += [(f"ProSeg without {name}", "proseg", switches) for name, switches in (
            ("tau", ["--use_tau", "False"]), ("Z", ["--use_z", "False"]),
            ("tau and Z", ["--use_tau", "False", "--use_z", "False"]))]
        runs += [("ProSeg with one encoder per rater", "proseg", ["--network_def#rater_encoders", "True"])]
    return runs


def selected(label: str, only: list[str] | None) -> bool:
    """Whether ``--only`` keeps a row: a word matches labels that contain it (any case), ``=label`` that label only."""
    if not only:
        return True
    return any(word[1:] == label if word.startswith("=") else word.lower() in label.lower() for word in only)


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
    """The rows of a bundle's evaluation table, each with its per-image rows under ``"per_image"``;
    an ablation's label replaces the method name."""
    doc = json.loads((root / "eval" / "metrics.json").read_text())
    rows = []
    for row in doc["rows"]:
        setting = row["setting"]
        suffix = setting[setting.find(" ("):] if " (" in setting and len(doc["rows"]) > 1 else ""
        method = setting if setting.startswith(label) else label + suffix
        rows.append({**row, "method": method, "per_image": doc.get("per_image", {}).get(setting, [])})
    return rows


def _per_rater_unet_row(rows: list[dict], num_raters: int, structures: list[str], method: str,
                        raters_of) -> dict | None:
    """A row from the R runs 'U-Net (Ak)': run k scored on the raters ``raters_of(k)`` (mean of their soft
    Dice, the raters present), then the mean over the R runs, for the summary and image by image."""
    by_label = {row["method"]: row for row in rows}
    runs = [by_label.get(f"U-Net (A{k + 1})") for k in range(num_raters)]
    if any(run is None for run in runs):
        return None

    def mean_of(entry: dict, prefix: str, k: int) -> float | None:
        values = [entry.get(f"{prefix}average_A{r + 1}") for r in raters_of(k)]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    row = {"method": method}
    per_image: dict[str, dict] = {}
    for prefix in structures:
        key = f"{prefix}average"
        run_means = [mean_of(run, prefix, k) for k, run in enumerate(runs)]
        row[key] = None if None in run_means else sum(run_means) / num_raters
        row[f"{prefix}mean_voting"] = None
        for k, run in enumerate(runs):
            for image_row in run["per_image"]:
                value = mean_of(image_row, prefix, k)
                if value is not None:
                    entry = per_image.setdefault(image_row["image"], {"image": image_row["image"]})
                    entry.setdefault(key, []).append(value)
    row["per_image"] = [{k: (sum(v) / len(v) if isinstance(v, list) else v) for k, v in entry.items()}
                        for entry in per_image.values()]
    return row


def per_rater_row(rows: list[dict], num_raters: int, structures: list[str]) -> dict | None:
    """The diagonal 'U-Net per rater' row of the AVAP suite: run k against rater k only. An oracle: each
    network is scored on the rater it was trained for (the personalization reference)."""
    return _per_rater_unet_row(rows, num_raters, structures, DIAGONAL, lambda k: [k])


def per_rater_all_raters_row(rows: list[dict], num_raters: int, structures: list[str]) -> dict | None:
    """The AVAP paper's view of the same R runs (its Table II rows M_r): run k scored against EVERY rater
    (mean over the raters present), then the mean over the R runs."""
    return _per_rater_unet_row(rows, num_raters, structures, ALL_RATERS, lambda k: range(num_raters))


DIAGONAL = "U-Net per rater, diagonal (M_r on A_r only)"
ALL_RATERS = "U-Net per rater, all raters (M_r on A_1..A_R, AVAP Table II)"


# The papers' claims, checked by a paired bootstrap over the test images:
# (claim, row that should be better, the other row, metric, larger is better)
CLAIMS = {
    "dpersona": [
        ("D-Persona Stage I has a lower GED than the Prob. U-Net (D-Persona Table 1)",
         "D-Persona (Stage I, 50 samples)", "Prob. U-Net (50 samples)", "ged", False),
        ("D-Persona Stage I has a higher Dice_soft than the Prob. U-Net (D-Persona Table 1)",
         "D-Persona (Stage I, 50 samples)", "Prob. U-Net (50 samples)", "dice_soft", True),
        ("D-Persona Stage II's personalized outputs beat the majority-vote U-Net on Dice_mean (D-Persona Table 2)",
         "D-Persona (Stage II)", "U-Net (majority vote)", "dice_mean", True),
        ("ProSeg personalized has a lower GED than D-Persona Stage II (ProSeg Table 1)",
         "ProSeg (personalized)", "D-Persona (Stage II)", "ged", False),
        ("ProSeg personalized has a higher Dice_match than D-Persona Stage II (ProSeg Table 1)",
         "ProSeg (personalized)", "D-Persona (Stage II)", "dice_match", True),
        ("ProSeg's prior samples are more diverse than its personalized outputs (ProSeg Sec. 5)",
         "ProSeg (prior, 50 samples)", "ProSeg (personalized)", "d_pp", True),
        ("ProSeg needs its latents: with tau and Z its samples have a lower GED than without both (ProSeg Table 2)",
         "ProSeg (prior, 50 samples)", "ProSeg without tau and Z (prior, 50 samples)", "ged", False),
        ("ProSeg needs its latents: with tau and Z its personalized Dice_mean is higher than without both",
         "ProSeg (personalized)", "ProSeg without tau and Z (personalized)", "dice_mean", True),
        ("ProSeg with one image encoder per rater (the paper's phi_i with their own heads) has more different personalized outputs than with one shared encoder",
         "ProSeg with one encoder per rater (personalized)", "ProSeg (personalized)", "d_pp", True),
        ("ProSeg with one image encoder per rater has a higher personalized Dice_mean than with one shared encoder",
         "ProSeg with one encoder per rater (personalized)", "ProSeg (personalized)", "dice_mean", True),
        # the baselines' published ordering (D-Persona Tables 1-2, ProSeg Tables 1 and 3)
        ("Pionono's personalized outputs beat CM-Global's on Dice_mean (D-Persona Tables 1-2, ProSeg Tables 1, 3)",
         "Pionono (personalized)", "CM-Global", "dice_mean", True),
        ("Pionono's personalized outputs have a lower GED than CM-Global's (D-Persona Tables 1-2)",
         "Pionono (personalized)", "CM-Global", "ged", False),
        ("CM-Pixel beats CM-Global on Dice_mean on LIDC (D-Persona Table 2; on NPC the reverse, by 0.08 points)",
         "CM-Pixel", "CM-Global", "dice_mean", True),
        ("D-Persona Stage II beats Pionono on Dice_mean (D-Persona Tables 1-2, ProSeg Tables 1, 3)",
         "D-Persona (Stage II)", "Pionono (personalized)", "dice_mean", True),
        ("ProSeg personalized beats Pionono on Dice_mean (ProSeg Tables 1, 3)",
         "ProSeg (personalized)", "Pionono (personalized)", "dice_mean", True),
        # TAB's published rows (D-Persona Tables 1-2, ProSeg Tables 1, 3)
        ("TAB's personalized outputs have a lower GED than CM-Global's (D-Persona Tables 1-2, ProSeg Table 3)",
         "TAB (personalized)", "CM-Global", "ged", False),
        ("Pionono beats TAB on Dice_mean on LIDC (D-Persona Table 2; on NPC the reverse in ProSeg Table 3)",
         "Pionono (personalized)", "TAB (personalized)", "dice_mean", True),
        ("D-Persona Stage II beats TAB on Dice_mean (D-Persona Tables 1-2, ProSeg Tables 1, 3)",
         "D-Persona (Stage II)", "TAB (personalized)", "dice_mean", True),
    ],
    "avap": [
        ("AVAP's calibrated map beats the majority-vote U-Net on Mean Voting (AVAP Table II)",
         "AVAP", "U-Net (majority vote)", "mean_voting", True),
        ("AVAP's per-rater outputs beat one U-Net per rater on Average (AVAP Table II: M_r against every rater)",
         "AVAP", ALL_RATERS, "average", True),
        ("AVAP's output r reaches the U-Net trained on rater r alone, scored on rater r (personalization reference)",
         "AVAP", DIAGONAL, "average", True),
        ("AVAP's per-rater outputs beat MH-UNet on Average (AVAP Table II)", "AVAP", "MH-UNet", "average", True),
        ("AVAP's per-rater outputs beat PADL's on Average (AVAP Table II)", "AVAP", "PADL (personalized)", "average", True),
        ("AVAP's calibrated map beats PADL's global mean on Mean Voting (AVAP Table II)",
         "AVAP", "PADL (global mean)", "mean_voting", True),
        ("PADL's per-rater outputs beat MH-UNet on Average (AVAP Table II: cup; on disc MH-UNet leads by 0.06 points)",
         "PADL (personalized)", "MH-UNet", "average", True),
        ("PADL's global mean beats the majority-vote U-Net on Mean Voting (AVAP Table II, MV-UNet)",
         "PADL (global mean)", "U-Net (majority vote)", "mean_voting", True),
        ("AVAP's calibrated map beats MR-Net's on Mean Voting (AVAP Table II)", "AVAP", "MR-Net", "mean_voting", True),
        ("AVAP's per-rater outputs beat MR-Net's on Average (AVAP Table II)", "AVAP", "MR-Net", "average", True),
        ("MH-UNet's per-rater outputs beat MR-Net's on Average (AVAP Table II)", "MH-UNet", "MR-Net", "average", True),
        ("MR-Net's calibrated map beats MH-UNet's on Mean Voting (AVAP Table II)", "MR-Net", "MH-UNet", "mean_voting", True),
        ("MR-Net's calibrated map beats the majority-vote U-Net on Mean Voting (AVAP Table II: MV-UNet)",
         "MR-Net", "U-Net (majority vote)", "mean_voting", True),
        ("the controller needs the rater code: both inputs beat features only on Average (AVAP Table IV)",
         "AVAP", "AVAP features only", "average", True),
        ("the rater code alone beats features only on Average (AVAP Table IV)",
         "AVAP code only", "AVAP features only", "average", True),
    ],
}


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "N/A"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def fmt_mean_std(values: list, seeds: int) -> str:
    mean, std = mean_and_std(values)
    if mean != mean:
        return "N/A"
    return f"{mean:.4f}" if seeds == 1 else f"{mean:.4f} ± {std:.4f}"


def claim_lines(suite: str, rows_by_seed: dict[int, list[dict]], structures: list[str]) -> list[str]:
    """One markdown row per claim whose two rows were run: the mean difference, its interval, the verdict."""
    lines = ["| claim | metric | mean difference | 95 % interval (paired bootstrap over images) | verdict |",
             "|---|---|---|---|---|"]
    for text, better, other, metric, larger in CLAIMS[suite]:
        for prefix in structures:
            key = f"{prefix}{metric}"
            per_seed = {name: [[r for r in rows if r["method"] == name] for rows in rows_by_seed.values()]
                        for name in (better, other)}
            if any(not any(found for found in seeds) for seeds in per_seed.values()):
                continue  # one of the rows was not run (--only)
            values = {name: per_image_values([found[0]["per_image"] for found in seeds if found], key)
                      for name, seeds in per_seed.items()}
            images = sorted(set(values[better]) & set(values[other]))
            if not images:
                continue
            mean, low, high = paired_bootstrap_interval([values[better][i] for i in images],
                                                        [values[other][i] for i in images])
            verdict = claim_verdict(low, high, larger)
            lines.append(f"| {text}: {better} vs {other} | {key} | {mean:+.4f} | [{low:+.4f}, {high:+.4f}] "
                         f"({len(images)} images) | {verdict} |")
    return lines


def personalization_lines(rows_by_seed: dict[int, list[dict]], num_raters: int,
                          consensus: str = "U-Net (STAPLE)") -> list[str]:
    """Per rater r: does the U-Net trained on rater r alone beat the consensus U-Net on Dice_Ar (the rater
    has a style a model can learn)? For the raters where it does, each personalized method's gain over
    the consensus U-Net on Dice_Ar. Paired bootstrap over the test images, values averaged over seeds."""

    def per_image(label: str, key: str) -> dict[str, float]:
        seeds = [[r for r in rows if r["method"] == label] for rows in rows_by_seed.values()]
        return per_image_values([found[0]["per_image"] for found in seeds if found], key)

    labels = list(dict.fromkeys(row["method"] for rows in rows_by_seed.values() for row in rows))
    if consensus not in labels:
        return []
    personalized = [label for label in labels if not label.startswith("U-Net")
                    and any(row.get("dice_A1") is not None for rows in rows_by_seed.values()
                            for row in rows if row["method"] == label)]
    lines = [f"| rater | row | Dice_Ar gain over {consensus} | 95 % interval (paired bootstrap over images) | verdict |",
             "|---|---|---|---|---|"]
    for r in range(1, num_raters + 1):
        own, key = f"U-Net (A{r})", f"dice_A{r}"
        if own not in labels:
            continue
        base = per_image(consensus, key)

        def gain(label: str) -> tuple[float, float, float, str] | None:
            values = per_image(label, key)
            images = sorted(set(values) & set(base))
            if not images:
                return None
            mean, low, high = paired_bootstrap_interval([values[i] for i in images], [base[i] for i in images])
            return mean, low, high, claim_verdict(low, high, True)

        style = gain(own)
        if style is None:
            continue
        has_style = style[3] == "holds"
        lines.append(f"| A{r} | {own} (the rater's style{'' if has_style else ': not shown'}) | {style[0]:+.4f} | "
                     f"[{style[1]:+.4f}, {style[2]:+.4f}] | {style[3]} |")
        if has_style:
            for label in personalized:
                result = gain(label)
                if result is not None:
                    lines.append(f"| A{r} | {label} | {result[0]:+.4f} | [{result[1]:+.4f}, {result[2]:+.4f}] | "
                                 f"{result[3]} |")
    return lines if len(lines) > 2 else []


def best_unet_lines(rows_by_seed: dict[int, list[dict]], margin: float = 0.02) -> list[str]:
    """Is each personalized method competitive with the U-Nets? Per seed, its Dice_mean against the best
    Dice_mean of the U-Net rows of that seed (issue 11: within ``margin`` of it, or better, in every seed).

    The best row is chosen per seed, after the fact, so the criterion is harder than against any one
    fixed U-Net row; the U-Net rows compared are listed (a seed with fewer rows has an easier best)."""
    labels = list(dict.fromkeys(row["method"] for rows in rows_by_seed.values() for row in rows))
    unets = [label for label in labels if label.startswith("U-Net (")]
    methods = [label for label in labels if not label.startswith("U-Net") and any(
        row.get("dice_mean") is not None for rows in rows_by_seed.values() for row in rows if row["method"] == label)]
    lines = [f"| row | per seed: its Dice_mean vs the best U-Net row's | smallest difference | within {margin} in every seed |",
             "|---|---|---|---|"]
    for label in methods:
        cells, gaps = [], []
        for seed, rows in rows_by_seed.items():
            mine = [row["dice_mean"] for row in rows if row["method"] == label and row.get("dice_mean") is not None]
            candidates = [(row["dice_mean"], row["method"]) for row in rows
                          if row["method"] in unets and row.get("dice_mean") is not None]
            if not mine or not candidates:
                continue
            best, best_label = max(candidates)
            gaps.append(mine[0] - best)
            cells.append(f"seed {seed}: {mine[0]:.4f} vs {best:.4f} ({best_label}, best of {len(candidates)})")
        if gaps:
            lines.append(f"| {label} | {'; '.join(cells)} | {min(gaps):+.4f} | "
                         f"{'yes' if min(gaps) >= -margin else 'no'} |")
    return lines if len(lines) > 2 else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="dpersona", choices=sorted(COLUMNS))
    parser.add_argument("--dataset", default="lidc-phantom", choices=["lidc-phantom", "qubiq", "synthetic2"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--stage2-epochs", type=int, default=10)
    parser.add_argument("--val-interval", type=int, default=2)
    parser.add_argument("--per-rater", action="store_true", help="dpersona suite: also train one U-Net per rater")
    parser.add_argument("--ablation", action="store_true",
                        help="dpersona suite: also ProSeg without tau, Z, both, and with one encoder per rater")
    parser.add_argument("--equal-steps", action="store_true",
                        help="one-stage methods train --epochs + --stage2-epochs (same steps as two-stage ones)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="train and evaluate every row once per seed (at least 3 for evidence)")
    parser.add_argument("--only", nargs="*", help="run only the methods whose label contains one of these words "
                        "('=label': exactly that label, e.g. '=ProSeg' without its ablations)")
    parser.add_argument("--bundle-args", default="",
                        help="extra overrides for every row trained in this call, one string, e.g. "
                        "\"--learning_rate 0.003\" (use another --out: reused rows keep their own settings)")
    parser.add_argument("--reuse-only", action="store_true",
                        help="train nothing: tabulate the rows (method, seed) already evaluated in --out and skip the rest")
    parser.add_argument("--qubiq-root", default=str(REPO.parent / "shared" / "data" / "qubiq_brain_growth"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    data, num_raters, _ = data_overrides(args.dataset, out, Path(args.qubiq_root))
    evaluation = ["--validate#handlers", AVAP_TABLE] if args.suite == "avap" else []
    rows_by_seed: dict[int, list[dict]] = {seed: [] for seed in args.seeds}
    timings = []
    for label, name, extra in methods(args.suite, num_raters, args.per_rater, args.ablation):
        if not selected(label, args.only):
            continue
        configs = REPO / "bundles" / name / "configs"
        two_stage = "stage2" in json.loads((configs / "train.json").read_text())
        epochs = args.epochs + (args.stage2_epochs if args.equal_steps and not two_stage else 0)
        budget = ["--epochs", str(epochs), "--stage2_epochs", str(args.stage2_epochs), "--val_interval", str(args.val_interval)]
        for seed in args.seeds:
            root = out / label.replace(" ", "_").replace("(", "").replace(")", "") / f"seed{seed}"
            log = root / "log.txt"
            if (root / "eval" / "metrics.json").is_file():
                print(f"[compare] {label}, seed {seed}: evaluated before in {root}; reusing it", flush=True)
                rows_by_seed[seed] += evaluation_rows(root, label)
                if (root / "train_seconds.txt").is_file():
                    timings.append((label, float((root / "train_seconds.txt").read_text())))
                continue
            if args.reuse_only:
                print(f"[compare] {label}, seed {seed}: not evaluated in {root}; skipped (--reuse-only)", flush=True)
                continue
            root.mkdir(parents=True, exist_ok=True)
            print(f"[compare] {label}, seed {seed}: training ({name}) -> {root}", flush=True)
            common = ["--bundle_root", str(root), *data, *budget, "--seed", str(seed), *extra,
                      *shlex.split(args.bundle_args)]
            try:
                seconds = bundle(["run", "training", "--config_file", str(configs / "train.json"), *common], log)
                bundle(["run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
                        *common, *evaluation], log)
            except RuntimeError as err:
                print(f"[compare] {label}, seed {seed}: {err}", flush=True)
                rows_by_seed[seed].append({"method": f"{label}: FAILED", "per_image": []})
                continue
            timings.append((label, seconds))
            (root / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
            rows_by_seed[seed] += evaluation_rows(root, label)
            print(f"[compare] {label}, seed {seed}: trained in {seconds / 60:.1f} min", flush=True)

    first = next((row for rows in rows_by_seed.values() for row in rows if "setting" in row), {})
    if args.suite == "avap":
        # the table's keys are prefixed by the structure's name when there are several ("core_mean_voting")
        structures = [key[: -len("mean_voting")] for key in first if key.endswith("mean_voting")] or [""]
        for seed, rows in rows_by_seed.items():
            for make_row in (per_rater_row, per_rater_all_raters_row):  # both views, labelled
                extra_row = make_row(rows, num_raters, structures)
                if extra_row is not None:
                    rows.append(extra_row)
        columns = [f"{s}{c}" for s in structures for c in COLUMNS["avap"]]
        columns += [f"{s}average_A{k + 1}" for s in structures for k in range(num_raters)]
    else:
        structures = [""]
        columns = COLUMNS["dpersona"] + [f"dice_A{i + 1}" for i in range(num_raters)] + ["dice_mean"]
    labels = list(dict.fromkeys(row["method"] for rows in rows_by_seed.values() for row in rows))
    by_label = {label: [row for rows in rows_by_seed.values() for row in rows if row["method"] == label]
                for label in labels}
    header = ["method", *columns]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join([label] + [fmt_mean_std([row.get(c) for row in by_label[label]], len(args.seeds))
                                          for c in header[1:]]) + " |" for label in labels]
    table = "\n".join(lines)
    claims = "\n".join(claim_lines(args.suite, rows_by_seed, structures))
    if args.suite == "dpersona":  # the personalization reference: raters whose own U-Net learns a style
        personal = personalization_lines(rows_by_seed, num_raters)
        if personal:
            claims += "\n\nPersonalization against the raters' own U-Nets:\n\n" + "\n".join(personal)
        competitive = best_unet_lines(rows_by_seed)
        if competitive:
            claims += "\n\nPersonalized outputs against the best U-Net row of each seed:\n\n" + "\n".join(competitive)
    command = "python " + " ".join(sys.argv)
    budget_text = (f"one-stage methods {args.epochs + args.stage2_epochs} epochs, two-stage {args.epochs} + "
                   f"{args.stage2_epochs}" if args.equal_steps else
                   f"{args.epochs} (+ {args.stage2_epochs} for the second stage of two-stage methods)")
    note = (f"command: {command}\nsuite: {args.suite}; data: {args.dataset}; training epochs {budget_text}; "
            f"seeds {args.seeds} (rows: mean ± std over seeds); test split\n"
            "training time (min): " + ", ".join(f"{label} {s / 60:.1f}" for label, s in timings))
    print("\n" + note + "\n\n" + table + "\n\n" + claims)
    (out / "compare.md").write_text(note + "\n\n" + table + "\n\n" + claims + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", *header])
        writer.writerows([[seed, row["method"], *(row.get(c) for c in header[1:])]
                          for seed, rows in rows_by_seed.items() for row in rows])
    summary = {str(seed): [{k: v for k, v in row.items() if k != "per_image"} for row in rows]
               for seed, rows in rows_by_seed.items()}
    (out / "compare.json").write_text(json.dumps({"command": command, "rows_by_seed": summary}, indent=2,
                                                 default=str) + "\n")


if __name__ == "__main__":
    main()
