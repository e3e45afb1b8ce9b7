"""``folder``: any folder of 3D volumes with one label volume per rater, cut into 2D slices.

The layout is given by patterns relative to ``root``, with ``{subject}`` for the subject's name
and, in a single label pattern, ``{rater}`` for the rater's (``*`` and ``?`` match within one
path component). The NPC layout of the D-Persona paper, for example::

    root/P001/image.nii.gz  root/P001/label_r1.nii.gz ... label_r4.nii.gz

    python -m multirater_monai.data prepare folder --out data/npc --root /data/npc \\
        --image "{subject}/image.nii.gz" --label "{subject}/label_r{rater}.nii.gz" --axis 2

Several contrasts are several image patterns (``--image '["{subject}/t1.nii.gz","{subject}/t2.nii.gz"]'``),
stacked as channels; a 4D image file is read as (X, Y, Z, C). Labels may also be one pattern per
rater (a list; the rater names are then R1..RN). A rater without a file for a subject is a missing
rater (``null``) for all of that subject's slices.

Subjects are split into training/validation/test before slicing (seeded), so no subject is in
two sections. Every slice along ``axis`` that some present rater marked is kept; of the others,
``round(empty_fraction * n_empty)`` per subject are kept, drawn with a generator seeded by
``(seed, subject name)``. Slices are written as 2D NIfTI (``(H, W)``, or ``(H, W, 1, C)`` for C
channels, see ``slice_io``) with the slice's own affine.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_output_dir
from ..utils.errors import MultiRaterDataError
from .datalist import split_counts, split_entries, write_multirater_datalist
from .slice_io import channels_last_image, save_nifti, save_rater_masks, slice_affine

__all__ = ["prepare_folder", "folder_subjects", "binary_rater_mask"]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _pattern_regex(pattern: str) -> re.Pattern:
    """``{subject}``/``{rater}`` become named groups, ``*``/``?`` match inside one path component."""
    out = []
    for token in re.split(r"(\{subject\}|\{rater\}|\*|\?)", pattern.replace(os.sep, "/")):
        if token == "{subject}":
            out.append(r"(?P<subject>[^/]+?)" if "(?P<subject>" not in "".join(out) else r"(?P=subject)")
        elif token == "{rater}":
            out.append(r"(?P<rater>[^/]+?)")
        elif token == "*":
            out.append(r"[^/]*")
        elif token == "?":
            out.append(r"[^/]")
        else:
            out.append(re.escape(token))
    return re.compile("^" + "".join(out) + "$")


def _natural(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def folder_subjects(root: str | os.PathLike, image: str | Sequence[str], label: str | Sequence[str]) -> dict:
    """Find the subjects of a folder layout; raise one ``MultiRaterDataError`` listing every layout problem.

    Returns ``{"subjects": [{"subject", "images": [...], "labels": [path or None per rater]}],
    "rater_names": [...]}``, subjects in natural order of their names.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise MultiRaterDataError(f"folder {root} does not exist; fix: pass root= the folder that holds the volumes.")
    images = [image] if isinstance(image, str) else [str(p) for p in image]
    labels = [label] if isinstance(label, str) else [str(p) for p in label]
    if not images or not labels:
        raise MultiRaterDataError("folder: give at least one image pattern and one label pattern; fix: pass image= and label=.")
    problems = []
    for p in images + labels:
        if "{subject}" not in p:
            problems.append(f"pattern '{p}' has no {{subject}}; fix: write e.g. '{{subject}}/image.nii.gz'.")
    if len(labels) == 1 and "{rater}" not in labels[0]:
        problems.append(f"label pattern '{labels[0]}' has no {{rater}}; fix: write e.g. '{{subject}}/label_r{{rater}}.nii.gz' "
                        "or give one pattern per rater as a list.")
    if len(labels) > 1 and any("{rater}" in p for p in labels):
        problems.append("label patterns: use either one pattern with {rater} or a list of per-rater patterns, not both.")
    if problems:
        raise MultiRaterDataError("folder layout: " + " ".join(problems))

    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    image_rx = [_pattern_regex(p) for p in images]
    label_rx = [_pattern_regex(p) for p in labels]
    found_images: list[dict[str, str]] = [{} for _ in images]
    found_labels: dict[tuple[str, str], str] = {}
    for rel in files:
        for c, rx in enumerate(image_rx):
            m = rx.match(rel)
            if m:
                found_images[c][m.group("subject")] = str(root / rel)
        for r, rx in enumerate(label_rx):
            m = rx.match(rel)
            if m:
                rater = m.group("rater") if len(labels) == 1 else str(r)
                found_labels[(m.group("subject"), rater)] = str(root / rel)
    if len(labels) == 1:
        rater_keys = sorted({r for _, r in found_labels}, key=_natural)
        rater_names = [f"R{r}" if r.isdigit() else r for r in rater_keys]
    else:
        rater_keys = [str(r) for r in range(len(labels))]
        rater_names = [f"R{r + 1}" for r in range(len(labels))]
    subjects = sorted(set().union(*(set(f) for f in found_images)), key=_natural)
    if not subjects:
        raise MultiRaterDataError(f"no file in {root} matches the image pattern '{images[0]}'; fix: check root= and image=.")
    if not rater_keys:
        raise MultiRaterDataError(f"no file in {root} matches the label pattern(s) {labels}; fix: check label=.")
    for subject, rater in sorted(found_labels):
        if subject not in found_images[0]:
            problems.append(f"{found_labels[(subject, rater)]}: label without an image; expected "
                            f"{root / images[0].replace('{subject}', subject)}; fix: add the image or remove the label.")
    out = []
    for s in subjects:
        imgs = [f.get(s) for f in found_images]
        for c, path in enumerate(imgs):
            if path is None:
                problems.append(f"subject {s}: no image {root / images[c].replace('{subject}', s)}; fix: add it or remove "
                                "the subject's other files.")
        labs = [found_labels.get((s, r)) for r in rater_keys]
        if not any(labs):
            problems.append(f"subject {s}: no rater label matching {labels}; fix: add the label volumes or remove "
                            f"{imgs[0]}.")
        out.append({"subject": s, "images": imgs, "labels": labs})
    if problems:
        raise MultiRaterDataError(f"{len(problems)} problem(s) in {root}:\n  - " + "\n  - ".join(problems))
    return {"subjects": out, "rater_names": rater_names}


def binary_rater_mask(values: np.ndarray, filename: str, foreground: int | None = None) -> np.ndarray:
    """A rater's label volume as bool: ``== foreground`` when given, else values must be 0/1 (or 0/255)."""
    if foreground is not None:
        return values == foreground
    found = np.unique(values)
    if found.size and (not np.isfinite(found).all() or not (set(found.tolist()) <= {0, 1} or set(found.tolist()) <= {0, 255})):
        shown = ", ".join(f"{v:g}" for v in found[:8]) + (", ..." if found.size > 8 else "")
        raise MultiRaterDataError(f"rater label file {filename} holds values {shown}, expected a binary mask (0/1 or 0/255); "
                                  "fix: pass foreground=K to take label value K as the structure.")
    return values > 0


def _load(path: str):
    import nibabel as nib

    try:
        img = nib.load(path)
        return np.asanyarray(img.dataobj), img.affine
    except Exception as e:  # noqa: BLE001 - any reader failure is an unreadable file
        raise MultiRaterDataError(f"{path} cannot be read as NIfTI ({type(e).__name__}: {e}); fix: re-export it as .nii.gz.") from e


def _subject_volumes(subject: dict, foreground: int | None):
    """(image (X, Y, Z, C), affine, [mask (X, Y, Z) or None per rater]) after shape checks."""
    chans, affine = [], None
    for path in subject["images"]:
        data, aff = _load(path)
        if data.ndim == 3:
            data = data[..., None]
        elif data.ndim != 4:
            raise MultiRaterDataError(f"image {path} has shape {data.shape}; expected a 3D volume (X, Y, Z) or (X, Y, Z, C); "
                                      "fix: convert it to a 3D NIfTI.")
        if chans and data.shape[:3] != chans[0].shape[:3]:
            raise MultiRaterDataError(f"image {path} has shape {data.shape[:3]} but {subject['images'][0]} has "
                                      f"{chans[0].shape[:3]}; fix: resample the contrasts onto one grid.")
        chans.append(data)
        affine = aff if affine is None else affine
    image = np.concatenate(chans, axis=3)
    masks = []
    for path in subject["labels"]:
        if path is None:
            masks.append(None)
            continue
        data, _ = _load(path)
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.shape != image.shape[:3]:
            raise MultiRaterDataError(f"rater label file {path} has shape {data.shape} but image {subject['images'][0]} has "
                                      f"{image.shape[:3]}; fix: resample the label onto the image grid.")
        masks.append(binary_rater_mask(data, path, foreground))
    return image, affine, masks


def prepare_folder(
    out_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    image: str | Sequence[str] = "{subject}/image.nii.gz",
    label: str | Sequence[str] = "{subject}/label_r{rater}.nii.gz",
    axis: int = 2,
    empty_fraction: float = 0.0,
    foreground: int | None = None,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> str:
    """Cut a folder of per-rater 3D volumes into 2D slices with a datalist; returns its path.

    Args:
        out_dir: new or empty folder for ``images/``, ``labels/`` and ``datalist.json``.
        root: the folder holding the volumes; ``image``/``label`` are patterns relative to it (module docstring).
        axis: the array axis (0, 1, 2) to slice along.
        empty_fraction: share (0..1) of each subject's slices that no rater marked to keep as well.
        foreground: take this label value as the structure (multi-class label maps); None: labels are 0/1 or 0/255.
        split: training/validation/test fractions over subjects.
        seed: drives the split and the choice of empty slices.
    """
    if root is None:
        raise MultiRaterDataError("folder needs root=; fix: pass --root /path/to/volumes.")
    if int(axis) not in (0, 1, 2):
        raise MultiRaterDataError(f"axis={axis}; fix: choose 0, 1 or 2 (the array axis to slice along).")
    if not 0.0 <= float(empty_fraction) <= 1.0:
        raise MultiRaterDataError(f"empty_fraction={empty_fraction}; fix: choose a share between 0 and 1.")
    axis = int(axis)
    layout = folder_subjects(root, image, label)
    subjects, rater_names = layout["subjects"], layout["rater_names"]
    try:
        split_counts(len(subjects), split)
    except ValueError as e:
        raise MultiRaterDataError(f"folder {root}: {e} fix: change split= or add subjects.") from e
    sections = split_entries(subjects, split, seed)
    section_of = {s["subject"]: name for name, ss in sections.items() for s in ss}

    from tqdm.auto import tqdm

    out = {name: [] for name in sections}
    counts = {"slices_marked": 0, "slices_empty": 0, "slices_empty_kept": 0}
    value_range = [np.inf, -np.inf]
    in_channels = None
    problems = []
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for subject in tqdm(subjects, desc="folder subjects", unit="subject", disable=not progress):
            try:
                volume, affine, masks = _subject_volumes(subject, foreground)
            except MultiRaterDataError as e:
                problems.append(str(e))
                continue
            in_channels = in_channels or volume.shape[3]
            if volume.shape[3] != in_channels:
                problems.append(f"subject {subject['subject']}: {volume.shape[3]} image channels, others have {in_channels}; "
                                "fix: give every subject the same contrasts.")
                continue
            other = tuple(a for a in range(3) if a != axis)
            marked = np.zeros(volume.shape[axis], dtype=bool)
            for m in masks:
                if m is not None:
                    marked |= m.any(axis=other)
            empty = np.flatnonzero(~marked)
            rng = np.random.default_rng([int(seed), zlib.crc32(subject["subject"].encode())])
            n_keep = int(round(float(empty_fraction) * empty.size))
            keep = set(np.flatnonzero(marked).tolist()) | set(rng.choice(empty, n_keep, replace=False).tolist())
            counts["slices_marked"] += int(marked.sum())
            counts["slices_empty"] += int(empty.size)
            counts["slices_empty_kept"] += n_keep
            name = _SAFE.sub("_", subject["subject"])
            for k in sorted(keep):
                case = f"{name}_k{k:03d}"
                aff = slice_affine(affine, axis, k)
                img = np.take(volume, k, axis=axis)  # (H, W, C)
                img = img[..., 0] if in_channels == 1 else channels_last_image(img, 2)
                if img.dtype.kind == "f":
                    img = img.astype(np.float32)
                value_range = [min(value_range[0], float(img.min())), max(value_range[1], float(img.max()))]
                save_nifti(tmp / "images" / f"{case}.nii.gz", img, aff)
                labels = save_rater_masks(tmp, [f"labels/{case}_r{r + 1:02d}.nii.gz" for r in range(len(masks))],
                                          [None if m is None else np.take(m, k, axis=axis) for m in masks], aff)
                out[section_of[subject["subject"]]].append(
                    {"image": f"images/{case}.nii.gz", "label": labels, "patient_id": subject["subject"],
                     "case_id": case, "slice_index": int(k)})
        if problems:
            raise MultiRaterDataError(f"{len(problems)} problem(s) in {root} (nothing written):\n  - " + "\n  - ".join(problems))
        if not any(out.values()):
            raise MultiRaterDataError(f"no rater marked any slice of the volumes in {root}; fix: check label= and foreground=, "
                                      "or keep empty slices with empty_fraction > 0.")
        write_multirater_datalist(
            tmp / "datalist.json",
            out,
            name=f"folder-{Path(root).name}",
            description=f"2D slices along axis {axis} of the per-rater volumes in {Path(root).absolute()}; split by subject",
            num_raters=len(rater_names),
            rater_names=rater_names,
            spatial_dims=2,
            in_channels=int(in_channels or 1),
            image_value_range=value_range,
            source={"root": str(Path(root).absolute()), "image": image, "label": label, "axis": axis,
                    "empty_fraction": float(empty_fraction), "foreground": foreground, "seed": int(seed),
                    "split": [float(f) for f in split], **counts},
            subjects={k: [s["subject"] for s in v] for k, v in sections.items()},
        )
    return str(Path(out_dir).absolute() / "datalist.json")
