"""QUBIQ challenge layout: ``caseNN/image.nii.gz`` + ``caseNN/<task>_segRR.nii.gz`` (one file per rater).

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

from ..utils.atomic import atomic_output_dir
from .datalist import split_entries, write_multirater_datalist
from ..utils.errors import MultiRaterDataError

__all__ = ["qubiq_entries", "prepare_qubiq", "default_qubiq_root"]

_CASE = re.compile(r"^case(\d+)$")


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

    ``root=None`` means :func:`default_qubiq_root`. Cases are shuffled by ``seed`` and cut by the
    ``split`` fractions (training, validation, test). ``spatial_dims`` is 2 when every image has at
    most one slice along its third axis.
    """
    import nibabel as nib

    root = Path(root) if root is not None else default_qubiq_root()
    entries = qubiq_entries(root, task)
    sections = split_entries(entries, split, seed)
    shapes = {tuple(nib.load(e["image"]).shape) for e in entries}
    spatial_dims = 2 if all(len(s) == 2 or (len(s) == 3 and s[2] == 1) for s in shapes) else 3
    num_raters = len(entries[0]["label"])
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        write_multirater_datalist(
            tmp / "datalist.json",
            sections,
            name=f"qubiq-{root.name}-{task}",
            description=f"QUBIQ {task} from {root} (files referenced in place, not copied)",
            num_raters=num_raters,
            rater_names=[f"R{r:02d}" for r in range(1, num_raters + 1)],
            spatial_dims=spatial_dims,
            image_shapes=sorted(list(s) for s in shapes),
            source=str(root.absolute()),
            task=task,
            seed=seed,
        )
    return str(Path(out_dir).absolute() / "datalist.json")
