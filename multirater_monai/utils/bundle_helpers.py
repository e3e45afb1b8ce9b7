"""Small helpers that bundle configs call, so configs stay wiring (DESIGN.md section 2)."""

from __future__ import annotations

import glob
import os

from .errors import MultiRaterDataError

__all__ = [
    "require_checkpoint", "require_writable_dir", "list_input_images", "default_bundle_root", "default_cache_root", "rater_names", "output_names",
    "output_formats", "OUTPUT_FORMATS",
]

_IMAGE_PATTERNS = ("*.nii.gz", "*.nii", "*.nrrd", "*.mha", "*.dcm")


def default_bundle_root(name: str, argv: list[str] | None = None) -> str:
    """The folder of bundle ``name``: where its configs were read from, else ``bundles/<name>`` under the
    working directory (the repository root), else the working directory (a bundle folder).

    MONAI's runner does not tell a config where it was read from, so the ``--config_file`` argument of the
    command line (``argv``, default ``sys.argv``) is looked at: a bundle started from any folder as
    ``python -m monai.bundle run --config_file /path/to/<name>/configs/inference.json`` has its root at
    ``/path/to/<name>``. ``--bundle_root`` on the command line overrides all of this.
    """
    import re
    import sys

    args = " ".join(sys.argv if argv is None else argv)
    for match in re.finditer(r"([^\s'\",\[\]]+)[/\\]configs[/\\][^\s'\",\[\]/\\]+\.(?:json|yaml|yml)", args):
        folder = os.path.abspath(match.group(1))
        if os.path.isfile(os.path.join(folder, "configs", "metadata.json")) and os.path.basename(folder) == name:
            return folder
    in_repo = os.path.join("bundles", name)
    return os.path.abspath(in_repo if os.path.isdir(in_repo) else ".")


def default_cache_root() -> str:
    """Where data sets are prepared: ``$MULTIRATER_DATA_DIR``, else ``~/.cache/multirater_monai``."""
    return os.environ.get("MULTIRATER_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "multirater_monai"))


def rater_names(num_raters: int, prefix: str = "A") -> list[str]:
    """``["A1", ..., "AR"]``: the column and output names of the raters."""
    return [f"{prefix}{i + 1}" for i in range(int(num_raters))]


def output_names(rater_names: list[str], num_structures: int = 1) -> list[str]:
    """Names of ``K * R`` structure-major per-rater outputs: the rater names, prefixed ``s<k>_`` with several structures."""
    if int(num_structures) == 1:
        return list(rater_names)
    return [f"s{k + 1}_{name}" for k in range(int(num_structures)) for name in rater_names]


OUTPUT_FORMATS = ("nifti", "dicom-seg")


def output_formats(output_format: str) -> list[str]:
    """``"nifti"``, ``"dicom-seg"`` or both joined by ``+`` -> the list of formats inference writes."""
    formats = [f.strip().lower() for f in str(output_format).split("+") if f.strip()]
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if not formats or unknown:
        raise MultiRaterDataError(
            f"output_format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)} (or several joined by '+'); "
            "fix: pass --output_format nifti, dicom-seg or nifti+dicom-seg"
        )
    return formats


def require_checkpoint(path: str, network=None) -> str:
    """Return ``path`` if the checkpoint exists; otherwise stop with the command that makes it.

    With ``network``, the checkpoint is also read (``weights_only=True``) and checked before anything
    runs: readable, made for this network (another bundle's or rater count's stops with the fix), finite.
    """
    if not os.path.isfile(path):
        root = os.path.dirname(os.path.dirname(os.path.abspath(path)))  # ckpt_dir is <bundle_root>/models
        train = os.path.join(root, "configs", "train.json")
        config = train if os.path.isfile(train) else "<the bundle's configs/train.json>"
        raise FileNotFoundError(
            f"checkpoint not found: {path}; fix: train the bundle into this bundle root first "
            f"(python -m monai.bundle run training --config_file {config} --bundle_root {root}), "
            "or pass --bundle_root of a trained run"
        )
    if network is not None:
        from .checkpoint import read_checkpoint

        read_checkpoint(path, network)
    return path


def list_input_images(input_dir: str | None = None, datalist: str | None = None, datalist_key: str = "test") -> list[dict]:
    """Images to run inference on: every image in ``input_dir`` if given, else a datalist section.

    An image is an image file, or a DICOM series folder (``input_dir`` itself when it holds DICOM files,
    else each sub-folder that does): MONAI's readers load a series folder as one volume.
    Returns MONAI-style items ``[{"image": path}, ...]``; raises one clear error when nothing is found.
    """
    if input_dir:
        if not os.path.isdir(input_dir):
            raise MultiRaterDataError(f"input_dir {input_dir} is not a folder; pass --input_dir with a folder of images")
        from ..dicom.series import dicom_series_folders, require_one_series

        series = [require_one_series(s) for s in dicom_series_folders(input_dir)]
        if series == [str(input_dir)]:
            return [{"image": str(input_dir)}]
        files = sorted({f for pattern in _IMAGE_PATTERNS for f in glob.glob(os.path.join(input_dir, pattern))})
        if not files and not series:
            raise MultiRaterDataError(
                f"no image files ({', '.join(_IMAGE_PATTERNS)}) and no DICOM series folder in {input_dir}; point "
                "--input_dir at a folder of images or of DICOM series"
            )
        _require_readable(files, input_dir)
        return [{"image": f} for f in files] + [{"image": s} for s in series]
    if not datalist or not os.path.isfile(datalist):
        raise MultiRaterDataError(
            f"datalist {datalist} not found; pass --input_dir with a folder of images or --datalist with a datalist JSON"
        )
    from multirater_monai.data import load_multirater_datalist

    items = load_multirater_datalist(datalist, datalist_key)
    if not items:
        raise MultiRaterDataError(f"section '{datalist_key}' of {datalist} is empty; choose another --datalist_key")
    _require_readable([item["image"] for item in items if isinstance(item["image"], str)], datalist)
    return [{"image": item["image"]} for item in items]


def _require_readable(files: list[str], where: str) -> None:
    """Read every NIfTI header before the first output is written: a bad file stops the run up front."""
    import nibabel as nib

    bad = []
    for f in files:
        if not f.endswith((".nii", ".nii.gz")):
            continue  # other formats are read by MONAI's readers when the run reaches them
        try:
            nib.load(f).header.get_data_shape()
        except Exception as e:  # noqa: BLE001 - truncated, empty, not NIfTI
            bad.append(f"{f} ({type(e).__name__})")
    if bad:
        raise MultiRaterDataError(
            f"{len(bad)} of the {len(files)} images of {where} cannot be read as NIfTI: {'; '.join(bad[:10])}"
            f"{' ...' if len(bad) > 10 else ''}; fix: replace or remove them (nothing was written)"
        )


def require_writable_dir(path: str) -> str:
    """Create ``path`` if needed and check that a file can be written there, before any work is done."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test_{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise MultiRaterDataError(
            f"output folder {path} is not writable ({e.strerror or e}); fix: pass --output_dir with a folder you can "
            "write to"
        ) from e
    return path
