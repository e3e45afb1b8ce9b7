"""MONAI Label app serving every multirater_monai bundle: per-rater masks, agreement maps, samples; training.

    monailabel start_server --app monailabel_app --studies <datastore folder> \
        [--conf models mh_unet,dpersona] [--conf models_dir <folder of bundle roots>] \
        [--conf bundle_overrides '{"mh_unet": {"intensity_range": [0, 1]}}']

conf:
    models: comma-separated bundle names, or "all" (default): one infer and one train task each.
    models_dir: where each bundle's trained root is, ``<models_dir>/<bundle>/models/model.pt``; default the
        repository's ``bundles`` folder (where ``python -m monai.bundle run training`` writes).
    bundle_overrides: JSON ``{bundle: {config key: value}}`` for inference and training (e.g. another
        rater count or network size the checkpoint was trained with).
    max_epochs: default epochs of a training request (10).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from monailabel.interfaces.app import MONAILabelApp

APP_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(APP_DIR)
for path in (APP_DIR, REPO_ROOT):  # the app's lib/ and, from a source checkout, the package
    if path not in sys.path:
        sys.path.insert(0, path)

from lib.infer_task import MultiRaterInferTask  # noqa: E402
from lib.train_task import MultiRaterTrainTask  # noqa: E402

from multirater_monai.serving import BundleInference  # noqa: E402

logger = logging.getLogger(__name__)


def available_bundles(bundles_dir: str) -> list[str]:
    return sorted(n for n in os.listdir(bundles_dir) if os.path.isfile(os.path.join(bundles_dir, n, "configs", "inference.json")))


class MultiRaterApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        bundles_dir = os.path.join(REPO_ROOT, "bundles")
        names = available_bundles(bundles_dir)
        wanted = conf.get("models", "all")
        chosen = names if wanted in ("", "all") else [n.strip() for n in wanted.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise ValueError(f"--conf models names unknown bundles {unknown}; fix: choose from {', '.join(names)} or 'all'")
        models_dir = conf.get("models_dir", bundles_dir)
        overrides = json.loads(conf.get("bundle_overrides", "{}"))
        self.runners = {n: BundleInference(os.path.join(bundles_dir, n), os.path.join(models_dir, n), overrides.get(n))
                        for n in chosen}
        self.max_epochs = int(conf.get("max_epochs", 10))
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="multirater_monai",
                         description="Multi-rater segmentation: one mask per rater, agreement maps, samples",
                         version="0.1.0")

    def init_infers(self):
        tasks = {}
        for name, runner in self.runners.items():
            task = MultiRaterInferTask(runner)
            if not task.is_valid():
                logger.warning(f"{name}: no checkpoint at {runner.checkpoint}; inference fails until it is trained")
            tasks[name] = task
        return tasks

    def init_trainers(self):
        return {name: MultiRaterTrainTask(runner, runner.overrides, self.max_epochs) for name, runner in self.runners.items()}
