"""QUBIQ challenge layout: ``caseNN/image.nii.gz`` + ``caseNN/<task>_segRR.nii.gz`` (one file per rater).

Every QUBIQ 2021 task is chosen with ``task``: the file prefix alone (``task01``, with ``root`` the
folder of ``caseNN/``), or the data set and task, ``brain-tumor/task02`` (``brain-tumor-task02``;
``kidney`` alone where the data set has one task), with ``root`` either the case folder or the
release folder that holds ``<data set>/`` (``<data set>/Training/`` is looked in too):

==============  =====================  ==========  ==============
data set        tasks                  raters      image channels
==============  =====================  ==========  ==============
brain-growth    task01                 7           1
brain-tumor     task01 - task03        3           4 (MR contrasts)
kidney          task01                 3           1
prostate        task01, task02         6           1
==============  =====================  ==========  ==============

The rater count is taken from the files found (the highest ``segRR``), not from this table.
A multi-channel image (brain-tumor's ``(H, W, 4)`` beside ``(H, W)`` masks) keeps its channels: it
is written once as ``images/caseNN.nii.gz`` of shape ``(H, W, 1, C)`` in ``out_dir`` (see
``slice_io``), so it loads as ``(C, H, W)``; the datalist says ``"in_channels": C``. Single-channel
images and all rater masks stay where they are.

The brain-growth copy in ``../shared/data/qubiq_brain_growth`` stores 2D slices as
``(128, 128, 1)`` volumes. Its datalist says ``"spatial_dims": 2``; load it with
``multirater_monai.transforms.MultiRaterPreprocessing(spatial_dims=2)`` (or ``EnsureSpatialDimsd`` + ``LoadRaterStackd(spatial_dims=2)``),
which drops the trailing size-1 axis so samples are ``(1, 128, 128)`` / ``(7, 128, 128)`` like
every other 2D data set. The datalist points at the original files by absolute path: nothing is
copied, so the (research-only) data never enters the project folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_output_dir
from .datalist import split_entries, write_multirater_datalist
from ..utils.errors import MultiRaterDataError

__all__ = ["QUBIQ_TASKS", "qubiq_entries", "prepare_qubiq", "default_qubiq_root", "resolve_qubiq_task"]

_CASE = re.compile(r"^case(\d+)$")
_FILE_TASK = re.compile(r"^task\d+$")

# data set -> (its tasks, raters in the 2021 release, image channels); documentation and messages only
QUBIQ_TASKS = {
    "brain-growth": (("task01",), 7, 1),
    "brain-tumor": (("task01", "task02", "task03"), 3, 4),
    "kidney": (("task01",), 3, 1),
    "prostate": (("task01", "task02"), 6, 1),
}


def _has_cases(folder: Path) -> bool:
    return folder.is_dir() and any(_CASE.match(d.name) and d.is_dir() for d in folder.iterdir())


def resolve_qubiq_task(root: str | os.PathLike, task: str = "task01") -> tuple[Path, str | None, str]:
    """``(case folder, data set or None, file task)`` for ``task`` (``task01``, ``kidney``, ``brain-tumor/task02``)."""
    root = Path(root).absolute()
    task = str(task).strip().lower().replace("\\", "/")
    if _FILE_TASK.match(task):
        return root, None, task
    dataset, _, file_task = task.replace("-task", "/task").partition("/")
    if dataset not in QUBIQ_TASKS:
        raise MultiRaterDataError(
            f"QUBIQ task '{task}' is not known; fix: pass task= a file prefix (task01) or one of "
            + ", ".join(f"{d}/{t}" for d, (ts, _, _) in QUBIQ_TASKS.items() for t in ts) + "."
        )
    tasks = QUBIQ_TASKS[dataset][0]
    if not file_task:
        if len(tasks) > 1:
            raise MultiRaterDataError(f"QUBIQ {dataset} has tasks {list(tasks)}; fix: pass task={dataset}/{tasks[0]} (or another).")
        file_task = tasks[0]
    if file_task not in tasks:
        raise MultiRaterDataError(f"QUBIQ {dataset} has no {file_task}; fix: choose one of {list(tasks)}.")
    for folder in (root, root / dataset, root / dataset / "Training", root / dataset / "training"):
        if _has_cases(folder):
            return folder, dataset, file_task
    raise MultiRaterDataError(
        f"no caseNN/ folders for QUBIQ {dataset} in {root}, {root / dataset} or {root / dataset / 'Training'}; "
        "fix: pass root= the QUBIQ release folder or the data set's case folder."
    )


def default_qubiq_root() -> Path:
    """``<repo>/../shared/data/qubiq_brain_growth``, where this workspace keeps the brain-growth copy."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "qubiq_brain_growth"


def qubiq_entries(root: str | os.PathLike, task: str = "task01") -> list[dict]:
    """One entry per ``caseNN`` folder (sorted by number) with absolute paths.

    ``label`` lists raters 1..R, where R is the highest rater number found for ``task`` in any
    case; a rater file absent from a case is ``None`` (missing rater).
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise MultiRaterDataError(
            f"QUBIQ folder {root} does not exist; fix: pass root= the folder that holds caseNN/ subfolders."
        )
    seg = re.compile(rf"^{re.escape(task)}_seg(\d+)\.nii(\.gz)?$")
    cases = []
    for d in root.iterdir():
        m = _CASE.match(d.name)
        if d.is_dir() and m:
            cases.append((int(m.group(1)), d))
    if not cases:
        raise MultiRaterDataError(f"no caseNN/ folders in {root}; fix: point root at the QUBIQ task folder.")
    cases.sort()
    per_case = []
    problems = []
    for number, d in cases:
        image = next((d / n for n in ("image.nii.gz", "image.nii") if (d / n).is_file()), None)
        raters = {}
        for f in d.iterdir():
            m = seg.match(f.name)
            if m:
                raters[int(m.group(1))] = str(f)
        if image is None:
            problems.append(f"{d}: no image.nii.gz; fix: add it or remove the case folder.")
        if not raters:
            problems.append(f"{d}: no {task}_segRR.nii.gz rater files; fix: check task= ('{task}') or remove the case.")
        per_case.append((d.name, image, raters))
    if problems:
        raise MultiRaterDataError(f"{len(problems)} problem(s) in {root}:\n  - " + "\n  - ".join(problems))
    num_raters = max(max(r) for _, _, r in per_case)
    return [
        {"image": str(image), "label": [raters.get(r) for r in range(1, num_raters + 1)], "case_id": name,
         "patient_id": name}
        for name, image, raters in per_case
    ]


def prepare_qubiq(
    root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    task: str = "task01",
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Write ``out_dir/datalist.json`` for a QUBIQ task, split by case; returns its path.

    ``root=None`` means :func:`default_qubiq_root`; ``task`` as in the module docstring. Cases are shuffled by ``seed`` and cut by the
    ``split`` fractions (training, validation, test). ``spatial_dims`` is 2 when every image has at
    most one slice along its third axis.
    """
    import nibabel as nib

    root = Path(root) if root is not None else default_qubiq_root()
    case_root, dataset, file_task = resolve_qubiq_task(root, task) if root.is_dir() else (root, None, task)
    entries = qubiq_entries(case_root, file_task)
    sections = split_entries(entries, split, seed)
    channels, problems = {}, []
    for e in entries:
        image_shape = tuple(nib.load(e["image"]).shape)
        label_file = next(f for f in e["label"] if f is not None)
        label_shape = tuple(nib.load(label_file).shape)
        channels[e["case_id"]] = _image_channels(image_shape, label_shape)
        if channels[e["case_id"]] is None:
            problems.append(f"{e['image']}: shape {image_shape} does not fit the rater masks' {label_shape} "
                            f"({label_file}); expected the same grid, or the same grid plus one channel axis; "
                            "fix: resample the image or the masks.")
    if problems:
        raise MultiRaterDataError(f"{len(problems)} problem(s) in {case_root}:\n  - " + "\n  - ".join(problems))
    in_channels = sorted(set(channels.values()))
    if len(in_channels) > 1:
        raise MultiRaterDataError(f"QUBIQ images in {case_root} have different channel counts {in_channels}; "
                                  "fix: give every case the same contrasts.")
    in_channels = in_channels[0]
    shapes = {tuple(nib.load(e["image"]).shape) for e in entries}
    label_shapes = {tuple(nib.load(next(f for f in e["label"] if f)).shape) for e in entries}
    spatial_dims = 2 if all(len(s) == 2 or (len(s) == 3 and s[2] == 1) for s in label_shapes) else 3
    num_raters = len(entries[0]["label"])
    name = f"qubiq-{dataset}-{file_task}" if dataset else f"qubiq-{case_root.name}-{file_task}"
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        if in_channels > 1:
            _write_channels_last(entries, sections, tmp, spatial_dims)
        write_multirater_datalist(
            tmp / "datalist.json",
            sections,
            name=name,
            description=f"QUBIQ {dataset + ' ' if dataset else ''}{file_task} from {case_root} (rater masks referenced in "
                        f"place{'; images rewritten channels-last under images/' if in_channels > 1 else ', not copied'})",
            num_raters=num_raters,
            rater_names=[f"R{r:02d}" for r in range(1, num_raters + 1)],
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            image_shapes=sorted(list(s) for s in shapes),
            source=str(case_root.absolute()),
            task=file_task,
            qubiq_dataset=dataset,
            seed=seed,
        )
    return str(Path(out_dir).absolute() / "datalist.json")


def _squeeze_trailing(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _image_channels(image_shape: tuple[int, ...], label_shape: tuple[int, ...]) -> int | None:
    """1 when image and masks share a grid, C when the image adds one trailing axis of C channels, else None."""
    img, lab = _squeeze_trailing(image_shape), _squeeze_trailing(label_shape)
    if img == lab:
        return 1
    if len(img) == len(lab) + 1 and img[: len(lab)] == lab:
        return int(img[-1])
    return None


def _write_channels_last(entries: list[dict], sections: dict, out: Path, spatial_dims: int) -> None:
    """Rewrite multi-channel images as ``images/<case>.nii.gz`` with the channels on the 4th axis; the
    entries (shared with ``sections``) then point at them, relative to the datalist."""
    import nibabel as nib
    from tqdm.auto import tqdm

    from .slice_io import save_nifti

    (out / "images").mkdir()
    for e in tqdm(entries, desc="qubiq images", unit="case"):
        img = nib.load(e["image"])
        data = np.asanyarray(img.dataobj)
        if spatial_dims == 2:
            data = data.reshape(data.shape[0], data.shape[1], 1, data.shape[-1])
        rel = f"images/{e['case_id']}.nii.gz"
        save_nifti(out / rel, data, img.affine)
        e["image"] = rel
