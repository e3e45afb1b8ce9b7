"""Small helpers that bundle configs call, so configs stay wiring (DESIGN.md section 2)."""

from __future__ import annotations

import glob
import os

from multirater_monai.data.errors import MultiRaterDataError

__all__ = ["require_checkpoint", "list_input_images"]

_IMAGE_PATTERNS = ("*.nii.gz", "*.nii", "*.nrrd", "*.mha", "*.dcm")


def require_checkpoint(path: str) -> str:
    """Return ``path`` if the checkpoint exists; otherwise stop with the command that makes it."""
    if not os.path.isfile(path):
        bundle = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        raise FileNotFoundError(
            f"checkpoint not found: {path}. Train the bundle first: python -m monai.bundle run training "
            f"--config_file {os.path.join(bundle, 'configs', 'train.json')}"
        )
    return path


def list_input_images(input_dir: str | None = None, datalist: str | None = None, datalist_key: str = "test") -> list[dict]:
    """Images to run inference on: every image file in ``input_dir`` if given, else a datalist section.

    Returns MONAI-style items ``[{"image": path}, ...]``; raises one clear error when nothing is found.
    """
    if input_dir:
        if not os.path.isdir(input_dir):
            raise MultiRaterDataError(f"input_dir {input_dir} is not a folder; pass --input_dir with a folder of images")
        files = sorted({f for pattern in _IMAGE_PATTERNS for f in glob.glob(os.path.join(input_dir, pattern))})
        if not files:
            raise MultiRaterDataError(
                f"no image files ({', '.join(_IMAGE_PATTERNS)}) in {input_dir}; point --input_dir at a folder of images"
            )
        return [{"image": f} for f in files]
    if not datalist or not os.path.isfile(datalist):
        raise MultiRaterDataError(
            f"datalist {datalist} not found; pass --input_dir with a folder of images or --datalist with a datalist JSON"
        )
    from multirater_monai.data import load_multirater_datalist

    items = load_multirater_datalist(datalist, datalist_key)
    if not items:
        raise MultiRaterDataError(f"section '{datalist_key}' of {datalist} is empty; choose another --datalist_key")
    return [{"image": item["image"]} for item in items]
