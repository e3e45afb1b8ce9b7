"""The project's model-zoo index (``model_zoo.json``): one entry per bundle.

Each entry carries the bundle's name, version, method and paper (from its ``metadata.json``),
its path, the sha1 of a reproducible zip of the bundle's configs and docs, the sha256 and size of
the shipped weights (``models/model.pt``, ``models/model.ts``), and the metrics of exactly those
weights (``docs/reference_metrics.json``, written by their evaluation run). ``check`` fails when
weights, configs or docs and the index disagree (for example after training into the bundle folder).

Rebuild after changing a bundle::

    python -m multirater_monai.zoo record bundles/NAME "note"   # eval/metrics.json -> docs/reference_metrics.json
    python -m multirater_monai.zoo build          # rewrite model_zoo.json
    python -m multirater_monai.zoo check          # exit 1 if model_zoo.json is stale
    python -m multirater_monai.zoo channels       # rewrite each metadata.json's channel_def from its network
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import zipfile
from pathlib import Path

__all__ = ["REPO_ROOT", "WEIGHT_FILES", "weight_checksums", "bundle_files", "bundle_zip_bytes", "build_index", "write_index",
           "check_index", "record_reference_metrics", "expected_channel_def", "write_channel_defs"]

REPO_ROOT = Path(__file__).resolve().parents[1]
INDEX_NAME = "model_zoo.json"
# What the zip checksum covers: configs and docs. The shipped weights have their own checksums
# (WEIGHT_FILES); evaluation outputs, predictions and training state are produced locally.
_SHIPPED_DIRS = ("configs", "docs")
_SHIPPED_FILES = ("LICENSE",)
_FIXED_TIME = (2024, 1, 1, 0, 0, 0)
WEIGHT_FILES = ("model.pt", "model.ts")


def weight_checksums(bundle_dir: Path) -> dict:
    """``{file: {"sha256", "bytes"}}`` of the weights in ``bundle_dir/models`` (WEIGHT_FILES present)."""
    found = {}
    for name in WEIGHT_FILES:
        path = Path(bundle_dir) / "models" / name
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            found[name] = {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}
    return found


def bundle_files(bundle_dir: Path) -> list[Path]:
    """The bundle's shipped files, sorted, relative to ``bundle_dir``."""
    files = [bundle_dir / name for name in _SHIPPED_FILES if (bundle_dir / name).is_file()]
    for sub in _SHIPPED_DIRS:
        files += [p for p in (bundle_dir / sub).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(p.relative_to(bundle_dir) for p in files)


def bundle_zip_bytes(bundle_dir: Path) -> bytes:
    """A byte-for-byte reproducible zip of the bundle (fixed timestamps, sorted names, LF text)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel in bundle_files(bundle_dir):
            info = zipfile.ZipInfo(f"{bundle_dir.name}/{rel.as_posix()}", date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (bundle_dir / rel).read_bytes().replace(b"\r\n", b"\n"))
    return buffer.getvalue()


def _entry(bundle_dir: Path, repo_root: Path) -> dict:
    meta_path = bundle_dir / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    for key in ("version", "method", "paper"):
        if key not in meta:
            raise ValueError(f"{meta_path} has no '{key}'; add it so the model-zoo index can describe the bundle")
    metrics_path = bundle_dir / "docs" / "reference_metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    return {
        "name": meta.get("name", bundle_dir.name),
        "version": meta["version"],
        "method": meta["method"],
        "paper": meta["paper"],
        "path": bundle_dir.relative_to(repo_root).as_posix(),
        "sha1": hashlib.sha1(bundle_zip_bytes(bundle_dir)).hexdigest(),
        "weights": weight_checksums(bundle_dir),
        "reference_metrics": metrics,
    }


def build_index(repo_root: Path | str = REPO_ROOT) -> dict:
    """The index as it should be for the bundles now in ``repo_root/bundles``."""
    repo_root = Path(repo_root)
    bundles = sorted(p for p in (repo_root / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
    return {"bundles": [_entry(b, repo_root) for b in bundles]}


def write_index(repo_root: Path | str = REPO_ROOT) -> Path:
    """Rewrite ``model_zoo.json`` atomically and return its path."""
    repo_root = Path(repo_root)
    target = repo_root / INDEX_NAME
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(build_index(repo_root), indent=2) + "\n")
    os.replace(tmp, target)
    return target


def check_index(repo_root: Path | str = REPO_ROOT) -> list[str]:
    """Names of bundles whose committed index entry differs from a fresh build (empty: up to date)."""
    repo_root = Path(repo_root)
    target = repo_root / INDEX_NAME
    committed = json.loads(target.read_text()) if target.is_file() else {"bundles": []}
    fresh = build_index(repo_root)
    old = {e["name"]: e for e in committed.get("bundles", [])}
    new = {e["name"]: e for e in fresh["bundles"]}
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))


def record_reference_metrics(bundle_dir: Path | str, note: str = "") -> Path:
    """Copy the summary of the bundle's last evaluation (``eval/metrics.json``) into
    ``docs/reference_metrics.json``, with a note saying how the run was made."""
    bundle_dir = Path(bundle_dir)
    source = bundle_dir / "eval" / "metrics.json"
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} not found; evaluate the bundle first: python -m monai.bundle run --config_file "
            f"\"['{bundle_dir}/configs/train.json','{bundle_dir}/configs/evaluate.json']\""
        )
    doc = json.loads(source.read_text())

    def rounded(summary: dict) -> dict:
        return {k: (None if v is None else round(float(v), 4)) for k, v in summary.items() if k != "setting"}

    if "rows" in doc:  # an evaluation table: one row per setting (sample counts, stages)
        reference = {"note": note, "metrics": {row["setting"]: rounded(row) for row in doc["rows"]}}
    else:
        reference = {
            "note": note,
            "num_images": doc.get("num_images"),
            "compat": doc.get("compat"),
            "metrics": rounded(doc["summary"]),
        }
    target = bundle_dir / "docs" / "reference_metrics.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(reference, indent=2) + "\n")
    os.replace(tmp, target)
    return target


def expected_channel_def(bundle_dir: Path | str) -> dict[str, str]:
    """The ``channel_def`` of the bundle's output as its ``inference.json`` network defines it, one key per channel."""
    from monai.bundle import ConfigParser

    from .networks import channel_def

    parser = ConfigParser()
    parser.read_config(str(Path(bundle_dir) / "configs" / "inference.json"))
    return channel_def(parser.get_parsed_content("network_def"), parser.get_parsed_content("rater_names"))


def write_channel_defs(repo_root: Path | str = REPO_ROOT) -> list[Path]:
    """Rewrite ``network_data_format.outputs.pred`` (``channel_def``, ``num_channels``) of every bundle's metadata."""
    written = []
    for bundle_dir in sorted(p for p in (Path(repo_root) / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file()):
        path = bundle_dir / "configs" / "metadata.json"
        meta = json.loads(path.read_text())
        pred = meta["network_data_format"]["outputs"]["pred"]
        pred["channel_def"] = expected_channel_def(bundle_dir)
        pred["num_channels"] = len(pred["channel_def"])
        path.write_text(json.dumps(meta, indent=4) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "build"
    if command == "build":
        print(f"wrote {write_index()}")
        return 0
    if command == "record":
        if len(argv) < 2 or argv[1].startswith("-"):
            print('usage: python -m multirater_monai.zoo record bundles/NAME "how the run was made"')
            return 2
        print(f"wrote {record_reference_metrics(argv[1], argv[2] if len(argv) > 2 else '')}")
        return 0
    if command == "check":
        stale = check_index()
        if stale:
            print(f"model_zoo.json disagrees with the bundle(s) {', '.join(stale)} (configs, docs or shipped weights); "
                  "fix: if you trained into the bundle folder, restore the shipped weights with `git checkout -- "
                  "bundles/<name>/models` (train with --bundle_root elsewhere); if the change is meant, rebuild with "
                  "`python -m multirater_monai.zoo build`")
            return 1
        print("model_zoo.json is up to date")
        return 0
    if command == "channels":
        for path in write_channel_defs():
            print(f"wrote {path}")
        return 0
    print('usage: python -m multirater_monai.zoo [build | check | channels | record bundles/NAME "how the run was made"]')
    return 2


if __name__ == "__main__":
    sys.exit(main())
