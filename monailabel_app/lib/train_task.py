"""MONAI Label train task of one multi-rater bundle: the datastore's per-rater label tags -> the bundle's training.

Each image of the datastore has one label per rater under the rater's tag (``labels/A1/<image>``,
``labels/A2/<image>``, ...; a missing rater is simply absent). The task writes them as the
multi-rater datalist and runs ``python -m monai.bundle run training`` of the bundle, whose checkpoint
(``<bundle root>/models/model.pt``) the infer task of the same bundle then serves.

    params {"max_epochs": 1}
"""

from __future__ import annotations

import logging
import os
import subprocess
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from multirater_monai.serving import BundleInference, datalist_from_rater_tags, training_command

logger = logging.getLogger(__name__)


class MultiRaterTrainTask(TrainTask):
    def __init__(self, runner: BundleInference, train_overrides: dict | None = None, max_epochs: int = 10) -> None:
        super().__init__(f"multirater_monai {runner.name}: train on the datastore, one label tag per rater "
                         f"({', '.join(runner.rater_names)})")
        self.runner = runner
        self.train_overrides = dict(train_overrides or {})
        self.max_epochs = int(max_epochs)

    def config(self):
        return {"max_epochs": self.max_epochs, "rater_tags": self.runner.rater_names}

    def __call__(self, request, datastore: Datastore):
        labels_by_image = {}
        for image_id in datastore.list_images():
            tags = datastore.get_labels_by_image_id(image_id)
            labels_by_image[datastore.get_image_uri(image_id)] = {
                tag: datastore.get_label_uri(label_id, tag) for tag, label_id in tags.items()
                if tag in self.runner.rater_names}
        root = self.runner.bundle_root
        os.makedirs(root, exist_ok=True)
        datalist = os.path.join(root, "datastore_datalist.json")
        sizes = datalist_from_rater_tags(datalist, labels_by_image, self.runner.rater_names,
                                         spatial_dims=self.runner.spatial_dims)
        cmd = training_command(self.runner.bundle_dir, root, datalist, int(request.get("max_epochs", self.max_epochs)),
                               self.train_overrides)
        logger.info(f"training {self.runner.name}: {' '.join(cmd)}")
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        result = {"bundle": self.runner.name, "datalist": datalist, **sizes, "returncode": proc.returncode,
                  "seconds": round(time.time() - start, 1), "checkpoint": str(self.runner.checkpoint)}
        if proc.returncode != 0:
            logger.error(proc.stdout[-3000:] + proc.stderr[-5000:])
            result["error"] = (proc.stderr.strip().splitlines() or ["training failed"])[-1]
        return result
