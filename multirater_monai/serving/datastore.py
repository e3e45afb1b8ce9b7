"""From an annotation datastore with one label tag per rater to a bundle training run.

MONAI Label's datastore keeps, per image, one label file per tag. With one tag per rater (the
bundle's rater names) the images and their tags are exactly a multi-rater datalist: a rater without
a label for an image is missing there (``null``, ``rater_mask`` False), as in the project's data sets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.datalist import write_multirater_datalist
from ..utils.errors import MultiRaterDataError

__all__ = ["datalist_from_rater_tags", "training_command"]


def datalist_from_rater_tags(path: str | os.PathLike, labels_by_image: Mapping[str, Mapping[str, str]],
                             rater_names: Sequence[str], validation_fraction: float = 0.2,
                             spatial_dims: int = 2) -> dict[str, int]:
    """Write a multi-rater datalist from ``{image path: {rater tag: label path}}``; returns the section sizes.

    Images without any rater's label are left out. The last ``validation_fraction`` of the images (sorted,
    at least one) validate; with a single image it serves both sections, so a first training can run.
    """
    raters = list(rater_names)
    entries = [{"image": str(image), "label": [tags.get(r) for r in raters]}
               for image, tags in sorted(labels_by_image.items()) if any(tags.get(r) for r in raters)]
    if not entries:
        raise MultiRaterDataError(
            f"no image of the datastore has a label tagged with a rater name {raters}; fix: save each rater's "
            "label under the rater's tag (e.g. labels/A1/<image>.nii.gz)"
        )
    n_val = max(1, int(round(len(entries) * float(validation_fraction)))) if len(entries) > 1 else 0
    training, validation = entries[: len(entries) - n_val], entries[len(entries) - n_val:] or entries[:1]
    write_multirater_datalist(path, {"training": training, "validation": validation, "test": validation},
                              name="monailabel-datastore", num_raters=len(raters), rater_names=raters,
                              spatial_dims=int(spatial_dims))
    return {"training": len(training), "validation": len(validation)}


def training_command(bundle_dir: str | os.PathLike, bundle_root: str | os.PathLike, datalist: str | os.PathLike,
                     max_epochs: int | None = None, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """``python -m monai.bundle run training`` of the bundle on ``datalist``, writing into ``bundle_root/models``.

    Raters keep the datastore's order (no ranking by area: the tag is the rater's identity); a two-stage
    bundle trains each stage ``max_epochs``; training starts afresh (no resume of an older state).
    """
    import json

    config = Path(bundle_dir) / "configs" / "train.json"
    train = json.loads(config.read_text())
    args: dict[str, Any] = {"bundle_root": str(bundle_root), "datalist": str(datalist), "rank_raters_by_area": False,
                            "resume": False}
    if max_epochs is not None:
        args["epochs"] = int(max_epochs)
        args["val_interval"] = 1
        if "stage2_epochs" in train:
            args["stage2_epochs"] = int(max_epochs)
    args.update(overrides or {})
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(config)]
    for key, value in args.items():
        cmd += [f"--{key}", value if isinstance(value, str) else repr(value)]  # MONAI's CLI reads Python literals
    return cmd
