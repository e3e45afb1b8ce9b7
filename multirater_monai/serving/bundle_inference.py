"""A bundle's ``inference.json`` run in-process on one image, and the choice of which output a request returns.

The bundle's own wiring does the work (preprocessing, slice-by-slice inference of a 2D bundle on a
volume, output groups, agreement map, inversion into the input's geometry, NIfTI writing), so a
served result is the file that ``python -m monai.bundle run`` would write. Per request a client may
choose the number of samples of a generative bundle and which output it gets back:

* ``personalized``: the R per-rater masks, one channel per rater (named after the bundle's raters);
* ``rater`` (with ``rater``: a name): that rater's mask alone as a label map whose value is the rater's
  number (A2's mask holds 2), so a viewer that names label values from the task's labels
  (``{"A1": 1, "A2": 2, ...}``) names it after the rater;
* ``agreement``: the agreement map in [0, 1] (mean of the samples, or the method's calibrated /
  consensus map for bundles without samples);
* ``samples``: S plausible masks of a generative bundle;
* ``dicom-seg``: for a DICOM series folder, one DICOM-SEG holding every rater's mask and the agreement
  map at 0.5 as segments (what OHIF and 3D Slicer load beside the series).

A DICOM series (a folder) or a 3D volume through a 2D bundle runs slice by slice and comes back in the
input's geometry (the bundle's ``slice_volumes``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..transforms.save_outputs import output_stem
from ..utils.errors import MultiRaterDataError

__all__ = ["BundleInference", "select_output", "AGREEMENT_KEYS", "OUTPUT_CHOICES"]

#: the bundle output that serves as "the agreement map", first present wins
AGREEMENT_KEYS = ("agreement", "calibrated", "consensus")
OUTPUT_CHOICES = ("personalized", "rater", "agreement", "samples", "dicom-seg")


class BundleInference:
    """Run ``<bundle_dir>/configs/inference.json`` with the checkpoint of ``bundle_root`` on single images.

    Args:
        bundle_dir: the bundle folder (its ``configs``).
        bundle_root: where the trained ``models/model.pt`` is (default: ``bundle_dir``).
        overrides: config overrides applied to every run (e.g. a smaller network, ``intensity_range``).
    """

    def __init__(self, bundle_dir: str | os.PathLike, bundle_root: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.name = self.bundle_dir.name
        self.config_file = self.bundle_dir / "configs" / "inference.json"
        self.bundle_root = Path(bundle_root) if bundle_root else self.bundle_dir
        self.overrides = dict(overrides or {})
        parser = self._parser()
        self.rater_names = [str(n) for n in parser.get_parsed_content("rater_names")]
        self.outputs = [str(o) for o in parser.get("outputs")]
        self.generative = "samples" in self.outputs
        self.spatial_dims = int(parser.get_parsed_content("spatial_dims"))
        self.agreement_key = next((k for k in AGREEMENT_KEYS if k in self.outputs), None)

    @property
    def checkpoint(self) -> Path:
        return self.bundle_root / "models" / "model.pt"

    def _parser(self, extra: Mapping[str, Any] | None = None):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.config_file))
        parser.update({"bundle_root": str(self.bundle_root), **self.overrides, **(extra or {})})
        return parser

    def run(self, image: str, output_dir: str, num_samples: int | None = None, dicom_seg: bool = False) -> dict[str, str]:
        """Inference on one image (a file, or a DICOM series folder); returns ``{output name: path}``.

        The NIfTI outputs always; with ``dicom_seg`` (a DICOM series input) also ``"dicom-seg"``: the SEG file.
        """
        extra: dict[str, Any] = {"output_dir": str(output_dir), "save_overlays": False,
                                 "output_format": "nifti+dicom-seg" if dicom_seg else "nifti",
                                 "input_dir": None, "dataset#data": [{"image": str(image)}]}
        if num_samples is not None:
            if not self.generative:
                raise MultiRaterDataError(f"bundle {self.name} draws no samples; fix: leave out num_samples")
            if int(num_samples) < 1:
                raise MultiRaterDataError(f"num_samples must be >= 1, got {num_samples}; fix: ask for 1 or more")
            extra["num_samples"] = int(num_samples)
        parser = self._parser(extra)
        parser.get_parsed_content("initialize")
        parser.get_parsed_content("evaluator").run()
        stem = output_stem(str(image).rstrip(os.sep))
        files = {key: os.path.join(output_dir, f"{stem}_{key}.nii.gz") for key in self.outputs
                 if os.path.isfile(os.path.join(output_dir, f"{stem}_{key}.nii.gz"))}
        if dicom_seg:
            files["dicom-seg"] = os.path.join(output_dir, f"{stem}_seg.dcm")
        return files

    def describe(self) -> dict[str, Any]:
        """What a client can ask this bundle for."""
        return {"bundle": self.name, "rater_names": self.rater_names, "outputs": self.outputs,
                "generative": self.generative, "agreement_output": self.agreement_key,
                "choices": [c for c in OUTPUT_CHOICES if c != "samples" or self.generative]}

    def run_request(self, image: str, output_dir: str, output: str = "personalized", rater: str | None = None,
                    num_samples: int | None = None) -> tuple[str, dict[str, Any]]:
        """One client request: run, then :func:`select_output`; returns the file and what its channels are."""
        if output not in OUTPUT_CHOICES:
            raise MultiRaterDataError(f"output {output!r} is not one of {', '.join(OUTPUT_CHOICES)}; fix: pass one of them")
        files = self.run(image, output_dir, num_samples=num_samples if self.generative else None,
                         dicom_seg=output == "dicom-seg")
        return select_output(files, output, self.rater_names, rater=rater, agreement_key=self.agreement_key)


def select_output(files: Mapping[str, str], output: str, rater_names: list[str], rater: str | None = None,
                  agreement_key: str | None = None) -> tuple[str, dict[str, Any]]:
    """The file answering a request for ``output`` (see the module docstring), and what its channels are."""
    if output == "dicom-seg":
        if "dicom-seg" not in files:
            raise MultiRaterDataError("no DICOM-SEG was written; fix: run with dicom_seg=True on a DICOM series folder")
        segments = (list(rater_names) if "personalized" in files else []) + (
            [f"{agreement_key} >= 0.5"] if agreement_key in files else [])
        return files["dicom-seg"], {"output": "dicom-seg", "segments": segments}
    if output == "agreement":
        if agreement_key is None or agreement_key not in files:
            raise MultiRaterDataError(f"this bundle writes no agreement map ({sorted(files)}); fix: ask for one of them")
        return files[agreement_key], {"output": "agreement", "source": agreement_key, "channels": ["agreement"]}
    if output == "samples":
        if "samples" not in files:
            raise MultiRaterDataError("this bundle draws no samples; fix: ask for 'personalized' or 'agreement'")
        count = nib.load(files["samples"]).shape[-1] if nib.load(files["samples"]).ndim > 2 else 1
        return files["samples"], {"output": "samples", "channels": [f"sample_{i + 1}" for i in range(count)]}
    if output not in ("personalized", "rater"):
        raise MultiRaterDataError(f"output {output!r} is not one of {', '.join(OUTPUT_CHOICES)}; fix: pass one of them")
    if "personalized" not in files:
        raise MultiRaterDataError("this bundle has no per-rater outputs; fix: ask for 'agreement' (its consensus)")
    if output == "personalized":
        return files["personalized"], {"output": "personalized", "channels": list(rater_names),
                                       "label_names": {name: i + 1 for i, name in enumerate(rater_names)}}
    if rater not in rater_names:
        raise MultiRaterDataError(f"rater {rater!r} is not one of this bundle's raters {rater_names}; fix: pass one of them")
    stack = nib.load(files["personalized"])
    data = np.asarray(stack.dataobj)
    if len(rater_names) > 1:  # the per-rater axis is the last one (SaveOutputsd)
        data = data[..., rater_names.index(rater)]
    path = files["personalized"].replace("_personalized.nii.gz", f"_{rater}.nii.gz")
    value = rater_names.index(rater) + 1
    nib.save(nib.Nifti1Image((data > 0).astype(np.uint8) * value, stack.affine), path)
    return path, {"output": "rater", "rater": rater, "channels": [rater], "label_names": {rater: value}}
