"""The bundle lint: configs are wiring. Used by tests/test_bundle_configs.py, and runnable on its own:

    python -m tests.bundle_lint            # prints every problem, exits 1 if there is one

Rules (docs/DESIGN.md section 2, README "Adding a method"):

* no ``lambda`` and no ``print(`` in any config value;
* no ``$`` expression longer than :data:`MAX_EXPRESSION` characters (``$import`` lines excepted);
* the shared key paths of :data:`TRAIN_KEYS`, :data:`INFERENCE_KEYS`, :data:`EVALUATE_KEYS` are present,
  and two-stage bundles (a ``stage2`` section) also have :data:`STAGE2_KEYS`;
* training, validation, evaluation and inference use the one ``preprocessing`` component;
* ``metadata.json`` names every output channel on its own (keys "0".."C-1", no range key such as "0-3":
  MONAI Label's stock bundle tasks read the keys as integers and stopped the server on a range).
* ``multi_gpu_train.json`` and ``multi_gpu_evaluate.json`` (``torchrun``) exist, with the keys of
  :data:`MULTI_GPU_TRAIN_KEYS` / :data:`MULTI_GPU_EVALUATE_KEYS` (two-stage: also :data:`MULTI_GPU_STAGE2_KEYS`);
  their ``initialize`` joins the process group and then runs the single-process file's ``initialize`` unchanged,
  their ``finalize`` leaves it, one process at a time prepares the data set, and every TensorBoard handler of train.json is built on rank 0 only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_EXPRESSION = 100
PREPROCESSING = "multirater_monai.transforms.MultiRaterPreprocessing"

COMMON_KEYS = ("imports", "bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "num_raters", "rater_names",
               "intensity_range", "spatial_dims", "in_channels", "device", "backbone", "network_def", "network",
               "preprocessing", "initialize", "run", "finalize")
TRAIN_KEYS = COMMON_KEYS + (
    "data_cache_root", "dataset_name", "dataset_options", "datalist", "rank_raters_by_area", "seed", "epochs",
    "val_interval", "batch_size", "learning_rate", "num_workers", "training", "resume", "resume_checkpoint",
    "train#datalist", "train#preprocessing", "train#dataset", "train#dataloader", "train#inferer", "train#optimizer",
    "train#handlers", "train#trainer", "train#trainer#max_epochs",
    "validate#datalist_key", "validate#datalist", "validate#preprocessing", "validate#dataset", "validate#dataloader",
    "validate#inferer", "validate#postprocessing", "validate#key_metric", "validate#handlers", "validate#evaluator",
    "validate#best_model_saver",
)
STAGE2_KEYS = ("stage2_epochs", "stage2_learning_rate", "stage1_checkpoint", "stage2#optimizer", "stage2#handlers",
               "stage2#trainer", "stage2#evaluator", "stage2#best_model_saver")
INFERENCE_KEYS = COMMON_KEYS + ("datalist", "datalist_key", "input_dir", "save_overlays", "dataset", "dataloader",
                                "inferer", "outputs", "postprocessing", "handlers", "evaluator")
EVALUATE_KEYS = ("evaluation_settings", "checkpoint", "validate#datalist_key", "validate#handlers", "initialize", "run")
MULTI_GPU_EVALUATE_KEYS = ("device", "datalist", "validate#sampler", "validate#dataloader#sampler", "validate#evaluator#val_handlers",
                           "initialize", "finalize")
MULTI_GPU_TRAIN_KEYS = MULTI_GPU_EVALUATE_KEYS + ("train#sampler", "train#dataloader#sampler", "train#dataloader#shuffle",
                                                  "train#trainer#distributed", "train#trainer#train_handlers")
MULTI_GPU_STAGE2_KEYS = ("stage2#trainer#distributed", "stage2#trainer#train_handlers", "stage2#evaluator#val_handlers")
INIT_DISTRIBUTED = "$multirater_monai.engines.init_distributed(@device)"
DATALIST_IN_TURN = "$multirater_monai.engines.ensure_dataset_in_turn(@dataset_name, @dataset_dir, **@dataset_options)"
DESTROY_DISTRIBUTED = "$multirater_monai.engines.destroy_distributed()"
TENSORBOARD = "TensorBoardStatsHandler"


def _values(node, path=""):
    """Every (path, string value) of a parsed config."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _values(value, f"{path}#{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _values(value, f"{path}#{i}")
    elif isinstance(node, str):
        yield path, node


def _has(config: dict, key_path: str) -> bool:
    # an evaluate.json override names its target with '#' in one top-level key ("validate#handlers")
    if key_path in config:
        return True
    node = config
    for part in key_path.split("#"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_problems(path: Path) -> list[str]:
    """Problems of one config file: lambdas, prints, long expressions."""
    problems = []
    for key, value in _values(json.loads(path.read_text())):
        where = f"{path.relative_to(REPO_ROOT)}: {key}"
        if "lambda" in value:
            problems.append(f"{where} holds a lambda; write a component in multirater_monai")
        if "print(" in value:
            problems.append(f"{where} calls print; use a handler (e.g. InferenceSummaryHandler)")
        if value.startswith("$") and not value.startswith("$import ") and len(value) > MAX_EXPRESSION:
            problems.append(f"{where} is a {len(value)}-character $ expression (> {MAX_EXPRESSION}); make it a component")
    return problems


def channel_def_problems(path: Path) -> list[str]:
    """Problems of one metadata file's output ``channel_def``: every channel its own integer key, all present."""
    problems = []
    outputs = json.loads(path.read_text()).get("network_data_format", {}).get("outputs", {})
    for name, spec in outputs.items():
        keys = list(spec.get("channel_def", {}))
        expected = [str(i) for i in range(int(spec.get("num_channels", 0)))]
        if keys != expected:
            problems.append(f"{path.relative_to(REPO_ROOT)}: outputs#{name}#channel_def has keys {keys}, not one key per "
                            f"channel {expected[:3] + ['...'] if len(expected) > 3 else expected}; fix: "
                            "python -m multirater_monai.zoo channels")
    return problems


def bundle_problems(bundle_dir: Path) -> list[str]:
    """Problems of one bundle: every config, the shared keys, one preprocessing."""
    configs = bundle_dir / "configs"
    problems = [p for f in sorted(configs.glob("*.json")) if f.name != "metadata.json" for p in config_problems(f)]
    problems += channel_def_problems(configs / "metadata.json")
    docs = {name: json.loads((configs / f"{name}.json").read_text()) for name in ("train", "inference", "evaluate")}
    required = {"train": TRAIN_KEYS + (STAGE2_KEYS if "stage2" in docs["train"] else ()),
                "inference": INFERENCE_KEYS, "evaluate": EVALUATE_KEYS}
    for name, keys in required.items():
        problems += [f"{bundle_dir.name}/configs/{name}.json lacks the shared key {k}" for k in keys if not _has(docs[name], k)]
    train, inference = docs["train"], docs["inference"]
    for name, doc in (("train", train), ("inference", inference)):
        if doc.get("preprocessing", {}).get("_target_") != PREPROCESSING:
            problems.append(f"{bundle_dir.name}/configs/{name}.json: preprocessing is not {PREPROCESSING}")
    uses = {"train#preprocessing#transforms#0": train.get("train", {}).get("preprocessing", {}).get("transforms", [None])[0],
            "validate#preprocessing": train.get("validate", {}).get("preprocessing"),
            "inference dataset#transform": inference.get("dataset", {}).get("transform")}
    problems += [f"{bundle_dir.name}: {k} is {v!r}, not the shared '@preprocessing'" for k, v in uses.items()
                 if v != "@preprocessing"]
    for key in ("backbone", "network_def"):
        if train.get(key, {}).get("_target_") != inference.get(key, {}).get("_target_"):
            problems.append(f"{bundle_dir.name}: train.json and inference.json build different {key}")
    return problems + multi_gpu_problems(bundle_dir, train, docs["evaluate"])


def multi_gpu_problems(bundle_dir: Path, train: dict, evaluate: dict) -> list[str]:
    """Problems of the two torchrun overlays of one bundle."""
    configs, name = bundle_dir / "configs", bundle_dir.name
    two_stage = "stage2" in train
    problems = []
    for overlay, keys, base in (("multi_gpu_train", MULTI_GPU_TRAIN_KEYS + (MULTI_GPU_STAGE2_KEYS if two_stage else ()), train),
                                ("multi_gpu_evaluate", MULTI_GPU_EVALUATE_KEYS, evaluate)):
        path = configs / f"{overlay}.json"
        if not path.is_file():
            problems.append(f"{name}/configs/{overlay}.json is missing (torchrun runs need it)")
            continue
        doc = json.loads(path.read_text())
        problems += [f"{name}/configs/{overlay}.json lacks the key {k}" for k in keys if not _has(doc, k)]
        if doc.get("initialize") != [INIT_DISTRIBUTED, *base.get("initialize", [])]:
            problems.append(f"{name}/configs/{overlay}.json: initialize must be [{INIT_DISTRIBUTED!r}] followed by "
                            f"the initialize of {'train' if base is train else 'evaluate'}.json")
        if doc.get("datalist") != DATALIST_IN_TURN:
            problems.append(f"{name}/configs/{overlay}.json: datalist must be {DATALIST_IN_TURN!r} (one process prepares it)")
        if doc.get("finalize", [None])[0] != DESTROY_DISTRIBUTED:
            problems.append(f"{name}/configs/{overlay}.json: finalize must start with {DESTROY_DISTRIBUTED!r}")
        if overlay == "multi_gpu_train":
            lists = [("train", "handlers"), ("validate", "handlers")]
            lists += [("stage2", "handlers"), ("stage2", "val_handlers")] if two_stage else []
            for section, key in lists:
                for i, handler in enumerate(train.get(section, {}).get(key, [])):
                    is_tb = isinstance(handler, dict) and handler.get("_target_") == TENSORBOARD
                    disabled = f"{section}#{key}#{i}#_disabled_" in doc
                    if is_tb != disabled:
                        problems.append(f"{name}/configs/multi_gpu_train.json: {section}#{key}#{i} is "
                                        f"{'a' if is_tb else 'not a'} {TENSORBOARD} but is {'not ' if not disabled else ''}"
                                        "disabled off rank 0 (only TensorBoard handlers, which open a file when built, are)")
    return problems


def all_bundle_dirs() -> list[Path]:
    return sorted(p for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


if __name__ == "__main__":
    found = [p for b in all_bundle_dirs() for p in bundle_problems(b)]
    print("\n".join(found) or f"bundle lint: {len(all_bundle_dirs())} bundles, no problem")
    sys.exit(1 if found else 0)
