"""Ship a trained run's weights with a bundle: model.pt, model.ts, and the metrics of exactly those weights.

    python scripts/ship_weights.py bundles/dpersona --from runs/cmp_lidc3/D-Persona/seed0 \
        --command "python -m monai.bundle run training --config_file bundles/dpersona/configs/train.json --epochs 10 --stage2_epochs 5 --val_interval 2 --seed 0" \
        --minutes 20.8

Steps, each of which stops the script with the reason when it fails (nothing is left half written:
every file is replaced by rename):
1. copy ``<run>/models/model.pt`` (read with ``weights_only=True``) to ``<bundle>/models/model.pt``;
2. evaluate it with the bundle's own ``evaluate.json`` on the test split of the default data;
3. record the table in ``docs/reference_metrics.json`` (with the training command and time, and the
   per-image metrics of the first 32 test images, which ``tests/test_shipped_weights.py`` recomputes), and the
   main figures in ``metadata.json``'s ``eval_metrics``, with a changelog entry and a new version;
4. export ``models/model.ts`` (TorchScript, with the final metadata inside);
5. write the section "Shipped weights" of ``docs/README.md`` (between its markers) and rebuild
   ``model_zoo.json`` (weight checksums).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multirater_monai import zoo  # noqa: E402
from multirater_monai.engines.evaluation_table import format_settings_table  # noqa: E402
from multirater_monai.utils.atomic import atomic_write_text  # noqa: E402

CHECK_IMAGES = 32  # one validation batch of every bundle: its random draws are those of the full run
EVAL_KEYS = ("ged", "dice_soft", "dice_max", "dice_match", "dice_mean", "mean_voting", "average")


def bundle_cli(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        sys.exit(f"ERROR: monai.bundle {' '.join(args[:2])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def first_batch(per_image: dict) -> dict:
    """{setting: [the metric rows of the first CHECK_IMAGES test images]}, rounded, image names shortened."""
    def row(r: dict) -> dict:
        out = {k: (None if v is None else round(float(v), 6)) for k, v in r.items() if k != "image"}
        return {"image": os.path.basename(str(r.get("image", ""))), **out}

    return {setting: [row(r) for r in rows[:CHECK_IMAGES]] for setting, rows in per_image.items()}


START, END = "<!-- shipped-weights:start -->", "<!-- shipped-weights:end -->"


def readme_section(bundle: Path, rows: list[dict], command: str, minutes: float, machine: str,
                   selection: str = "") -> str:
    sizes = {n: (bundle / "models" / n).stat().st_size / 2**20 for n in ("model.pt", "model.ts")}
    columns = [c for c in rows[0] if c != "setting"]
    return "\n".join([
        START, "## Shipped weights", "",
        f"`models/model.pt` ({sizes['model.pt']:.1f} MiB) and `models/model.ts` ({sizes['model.ts']:.1f} MiB, TorchScript), "
        f"trained in {minutes:.1f} minutes on a {machine} by", "", f"    {command}", "",
        *([selection, ""] if selection else []),
        "on the default data (lidc-phantom quick subset). Their metrics on its test split (247 slices of 20 "
        "patients; `docs/reference_metrics.json`, `metadata.json` `eval_metrics`; `tests/test_shipped_weights.py` "
        "re-evaluates the first 32 images):", "",
        format_settings_table(rows, columns), "",
        "Inference needs no training: `python -m monai.bundle run --config_file "
        f"bundles/{bundle.name}/configs/inference.json --input_dir DIR`; without MONAI: "
        f"`python scripts/plain_torch_inference.py --bundle bundles/{bundle.name} --image IMAGE.nii.gz --out DIR`.",
        END])


def write_readme_section(bundle: Path, section: str) -> None:
    path = bundle / "docs" / "README.md"
    text = path.read_text()
    if START in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(path, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle folder, e.g. bundles/dpersona")
    parser.add_argument("--from", dest="run", required=True, help="bundle root of the finished training run")
    parser.add_argument("--command", required=True, help="the training command that made the run (recorded)")
    parser.add_argument("--minutes", type=float, required=True, help="its training time (recorded)")
    parser.add_argument("--machine", default="2-core CPU, 1 thread", help="where it trained (recorded)")
    parser.add_argument("--selection", default="", help="how this run was chosen among others (recorded)")
    args = parser.parse_args()

    import torch

    bundle, run = Path(args.bundle).absolute(), Path(args.run).absolute()
    configs = bundle / "configs"
    source = run / "models" / "model.pt"
    if not source.is_file():
        sys.exit(f"ERROR: {source} not found; fix: pass --from the bundle root of a finished training run.")
    torch.load(source, map_location="cpu", weights_only=True)  # refuses anything but tensors
    models = bundle / "models"
    models.mkdir(exist_ok=True)
    tmp = models / ".model.pt.partial"
    shutil.copyfile(source, tmp)
    os.replace(tmp, models / "model.pt")
    print(f"[ship] {source} -> {models / 'model.pt'}", flush=True)

    bundle_cli(["run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
                "--bundle_root", str(bundle)])
    doc = json.loads((bundle / "eval" / "metrics.json").read_text())
    note = (f"the shipped weights (models/model.pt, sha256 in model_zoo.json) on the test split of the default "
            f"data (lidc-phantom quick subset: 247 slices of 20 patients); trained by: {args.command} "
            f"({args.minutes:.1f} min on a {args.machine})" + (f"; {args.selection}" if args.selection else ""))
    zoo.record_reference_metrics(bundle, note)
    reference_path = bundle / "docs" / "reference_metrics.json"
    reference = json.loads(reference_path.read_text())
    reference["training_command"] = args.command
    reference["training_minutes"] = round(args.minutes, 1)
    reference["selection"] = args.selection
    reference["first_batch"] = {"num_images": CHECK_IMAGES, "per_image": first_batch(doc["per_image"])}
    atomic_write_text(reference_path, json.dumps(reference, indent=2) + "\n")

    meta_path = configs / "metadata.json"
    meta = json.loads(meta_path.read_text())
    single = len(doc["rows"]) == 1
    meta["eval_metrics"] = {
        (key if single else f"{slug(row['setting'])}_{key}"): round(float(row[key]), 4)
        for row in doc["rows"] for key in EVAL_KEYS if row.get(key) is not None
    }
    entry = (f"shipped weights: models/model.pt and model.ts, trained by `{args.command}` on the default data; "
             "eval_metrics are theirs")
    if not meta["changelog"].get(meta["version"], "").startswith("shipped weights"):  # else: re-shipped, same version
        major, minor, _ = (int(v) for v in meta["version"].split("."))
        meta["version"] = f"{major}.{minor + 1}.0"
    meta["changelog"] = {meta["version"]: entry, **{k: v for k, v in meta["changelog"].items() if k != meta["version"]}}
    atomic_write_text(meta_path, json.dumps(meta, indent=4) + "\n")

    bundle_cli(["ckpt_export", "network_def", "--filepath", str(models / "model.ts"), "--ckpt_file",
                str(models / "model.pt"), "--meta_file", str(meta_path), "--config_file", str(configs / "inference.json")])
    write_readme_section(bundle, readme_section(bundle, doc["rows"], args.command, args.minutes, args.machine, args.selection))
    zoo.write_index()
    sizes = {name: (models / name).stat().st_size / 2**20 for name in ("model.pt", "model.ts")}
    print(f"[ship] {bundle.name} {meta['version']}: model.pt {sizes['model.pt']:.2f} MiB, model.ts {sizes['model.ts']:.2f} MiB; "
          f"eval_metrics {meta['eval_metrics']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
