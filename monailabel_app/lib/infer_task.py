"""MONAI Label infer task of one multi-rater bundle: per-rater masks, one rater, the agreement map or samples.

MONAI Label's stock BundleInferTask reads one output key and writes one label map; a multi-rater
bundle has R rater outputs, an agreement map and S samples, so this task runs the bundle's own
inference (multirater_monai.serving.BundleInference) and returns the output the request asks for:

    params {"output": "personalized" | "rater" | "agreement" | "samples" | "dicom-seg", "rater": "A2", "num_samples": 8}

("dicom-seg" needs a DICOM series as the image: a DICOMweb datastore hands the task a series folder.)

The result JSON names the file's channels (``channels``, ``label_names``), so a viewer can label them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from multirater_monai.serving import BundleInference

logger = logging.getLogger(__name__)


class MultiRaterInferTask(InferTask):
    def __init__(self, runner: BundleInference, default_output: str = "personalized") -> None:
        self.runner = runner
        self.default_output = default_output
        labels = {name: i + 1 for i, name in enumerate(runner.rater_names)} if "personalized" in runner.outputs else {
            "agreement": 1}
        config: dict[str, Any] = {"output": runner.describe()["choices"], "rater": runner.rater_names}
        if runner.generative:
            config["num_samples"] = 8
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=runner.spatial_dims,
            description=f"multirater_monai {runner.name}: per-rater masks {', '.join(runner.rater_names)}, agreement map"
            + (", samples" if runner.generative else ""),
            config=config,
        )
        self._lock = threading.Lock()  # one bundle run at a time per task: the network is CPU-bound anyway

    def is_valid(self) -> bool:
        return self.runner.checkpoint.is_file()

    def get_path(self, validate=True):
        return str(self.runner.checkpoint)

    def __call__(self, request) -> tuple[str | None, dict]:
        output = request.get("output", self.default_output)
        output = output[0] if isinstance(output, list) else output  # the info default is the list of choices
        rater = request.get("rater")
        rater = rater[0] if isinstance(rater, list) else rater
        num_samples = request.get("num_samples")
        out_dir = tempfile.mkdtemp(prefix=f"mr_{self.runner.name}_")
        with self._lock:
            path, info = self.runner.run_request(request["image"], out_dir, output=output, rater=rater,
                                                 num_samples=int(num_samples) if num_samples else None)
        # MONAI Label removes the returned file after sending it; the rest of the run's files go now
        for name in os.listdir(out_dir):
            if os.path.join(out_dir, name) != path:
                os.remove(os.path.join(out_dir, name))
        info.update({"bundle": self.runner.name, "rater_names": self.runner.rater_names})
        logger.info(f"{self.runner.name}: {output} -> {path}")
        return path, info
