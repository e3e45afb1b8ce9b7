"""Multi-rater datalists: MONAI decathlon-style JSON whose ``label`` is a list of per-rater files.

Layout (paths relative to the JSON file's folder, or absolute; ``null`` marks a missing rater)::

    {"name": "...", "num_raters": 4, "rater_names": ["A1", "A2", "A3", "A4"], "spatial_dims": 2,
     "training": [{"image": "images/x.nii.gz",
                   "label": ["labels/x_r1.nii.gz", null, "labels/x_r3.nii.gz", "labels/x_r4.nii.gz"],
                   "patient_id": "...", "case_id": "..."}],
     "validation": [...], "test": [...]}

``image`` may also be a list of files (several contrasts, loaded as channels by ``LoadImaged``).
Multi-structure data sets (e.g. optic disc + cup) store ``num_raters * num_structures`` label
files per entry, structure-major (all raters of structure 0, then all raters of structure 1),
and name the structures in a ``"structures"`` header entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_write_json
from ..utils.errors import MultiRaterDataError

__all__ = [
    "DATALIST_SECTIONS",
    "load_multirater_datalist",
    "read_datalist_header",
    "structure_names",
    "write_multirater_datalist",
    "validate_multirater_datalist",
    "split_counts",
    "split_entries",
]

DATALIST_SECTIONS = ("training", "validation", "test")
# at most this many problems are spelled out in one error message; all are kept on the exception
_MAX_LISTED = 100
_PREPARE_HINT = "prepare it with `python -m multirater_monai.data prepare NAME --out DIR`"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise MultiRaterDataError(f"datalist {path} does not exist; fix: check the path or {_PREPARE_HINT}.")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise MultiRaterDataError(
            f"datalist {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            f"fix: repair the file or {_PREPARE_HINT}."
        ) from e
    if not isinstance(data, dict):
        raise MultiRaterDataError(f"datalist {path} must hold a JSON object with sections {DATALIST_SECTIONS}.")
    return data


def _join(base_dir: Path, item):
    """Resolve one path against ``base_dir``; ``None`` (missing rater) stays ``None``."""
    if item is None:
        return None
    if isinstance(item, (str, os.PathLike)):
        return os.path.normpath(os.path.join(base_dir, item))
    return item  # not a path: left for the validator to report


def read_datalist_header(path: str | os.PathLike) -> dict:
    """The datalist's descriptive entries (``num_raters``, ``rater_names``, ``spatial_dims``, ...) without the sections."""
    data = _read_json(Path(path))
    return {k: v for k, v in data.items() if not (isinstance(v, list) and k in DATALIST_SECTIONS)}


def structure_names(path: str | os.PathLike, num_structures: int = 1) -> list[str]:
    """The datalist's ``structures`` names, or ``["s1", ...]`` when it names none."""
    names = read_datalist_header(path).get("structures") or [f"s{k + 1}" for k in range(int(num_structures))]
    if len(names) != int(num_structures):
        raise MultiRaterDataError(
            f"datalist {path} names {len(names)} structures {names} but num_structures={num_structures}; fix: set "
            f"num_structures to {len(names)}."
        )
    return [str(n) for n in names]


def load_multirater_datalist(
    path: str | os.PathLike,
    data_list_key: str = "training",
    base_dir: str | os.PathLike | None = None,
    validate: bool = False,
    num_raters: int | None = None,
) -> list[dict]:
    """Load one section of a multi-rater datalist with absolute paths.

    With ``validate=True`` the section is checked by ``validate_multirater_datalist`` (every
    missing/unreadable file, shape mismatch, wrong rater count, NaN image and an empty section,
    in one message) before anything trains on it; bundles load their data this way.

    ``monai.data.load_decathlon_datalist`` resolves ``image`` and the other keys; it leaves a
    ``label`` list that contains ``null`` untouched, so rater files are resolved here, keeping
    ``None`` for missing raters. An empty section gives ``[]`` (``validate_multirater_datalist``
    reports an empty data set).
    """
    from monai.data import load_decathlon_datalist

    path = Path(path).absolute()
    data = _read_json(path)
    if data_list_key not in data:
        sections = [k for k, v in data.items() if isinstance(v, list)]
        raise MultiRaterDataError(
            f"datalist {path} has no section '{data_list_key}' (it has {sections}); "
            f"fix: use one of those as data_list_key or {_PREPARE_HINT}."
        )
    if not isinstance(data[data_list_key], list):
        raise MultiRaterDataError(f"datalist {path}: section '{data_list_key}' must be a list of entries.")
    if not data[data_list_key]:
        if validate:
            validate_multirater_datalist([], num_raters=num_raters, source=f"{path} [{data_list_key}]")
        return []  # load_decathlon_datalist cannot read an empty "test" section
    base = Path(base_dir) if base_dir is not None else path.parent
    entries = load_decathlon_datalist(path, is_segmentation=True, data_list_key=data_list_key, base_dir=base)
    for entry in entries:
        label = entry.get("label")
        if isinstance(label, list):
            entry["label"] = [_join(base, f) for f in label]
    if validate:
        validate_multirater_datalist(entries, num_raters=num_raters, source=f"{path} [{data_list_key}]")
    return entries


def write_multirater_datalist(path: str | os.PathLike, sections: Mapping[str, Sequence[Mapping]], **header) -> str:
    """Write a datalist atomically: ``header`` entries first, then ``sections`` (e.g. training/validation/test).

    ``num_raters`` is filled in from the longest ``label`` list when not given. Returns the path.
    """
    sections = {k: [dict(e) for e in v] for k, v in sections.items()}
    if "num_raters" not in header:
        lengths = [len(e["label"]) for v in sections.values() for e in v if isinstance(e.get("label"), list)]
        if lengths:
            header["num_raters"] = max(lengths)
    clash = set(header) & set(sections)
    if clash:
        raise ValueError(f"header keys {sorted(clash)} clash with section names.")
    return atomic_write_json(path, {**header, **sections})


def _header_shape(path: str) -> tuple[tuple[int, ...], bool]:
    """Array shape from the file header only, and whether the stored data type is floating point.

    nibabel reads NIfTI/Analyze/MGH headers; SimpleITK covers the rest (PNG, NRRD, MHA, ...).
    Both report the axes in the order MONAI's readers load them.
    """
    import nibabel as nib

    try:
        img = nib.load(path)
        return tuple(int(s) for s in img.shape), np.dtype(img.get_data_dtype()).kind == "f"
    except Exception:
        pass
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()  # raises when unreadable
    shape = tuple(int(s) for s in reader.GetSize())
    if reader.GetNumberOfComponents() > 1:
        shape = shape + (int(reader.GetNumberOfComponents()),)
    return shape, False


def _has_non_finite(path: str) -> bool:
    import nibabel as nib

    return not bool(np.isfinite(np.asanyarray(nib.load(path).dataobj)).all())


def _spatial_match(image_shape: tuple[int, ...], label_shape: tuple[int, ...]) -> bool:
    """Same grid, ignoring size-1 axes; the image may carry one extra trailing channel axis."""
    img = tuple(s for s in image_shape if s != 1)
    lab = tuple(s for s in label_shape if s != 1)
    return img == lab or (len(img) == len(lab) + 1 and img[: len(lab)] == lab)


def validate_multirater_datalist(
    entries: Sequence[Mapping],
    num_raters: int | None = None,
    check_shapes: bool = True,
    check_finite: bool = True,
    source: str | os.PathLike | None = None,
) -> None:
    """Check every entry and raise ONE ``MultiRaterDataError`` that lists all problems found.

    Checks: the data set is not empty; each entry has an ``image`` that exists and can be read;
    ``label`` is a list with ``num_raters`` items (when given) and at least one rater; every rater
    file exists and can be read; with ``check_shapes``, every rater's grid equals the image's
    (from the file headers only); with ``check_finite``, floating-point images hold no NaN/Inf
    (integer images cannot, so only float images are read). Entries are expected with resolved
    paths, as ``load_multirater_datalist`` returns them. ``source`` names the datalist in the message.
    The exception's ``problems`` attribute holds every problem line.
    """
    where = f" in {source}" if source is not None else ""
    if len(entries) == 0:
        raise MultiRaterDataError(
            f"the data set{where} is empty (no entries); fix: check data_list_key and the datalist, or {_PREPARE_HINT}."
        )
    problems: list[str] = []
    shape_cache: dict[str, tuple[tuple[int, ...], bool] | None] = {}

    def shape_of(f: str, what: str, tag: str):
        # returns the header shape or None after recording why it could not be had
        if f in shape_cache:
            return shape_cache[f]
        shape_cache[f] = None
        if not os.path.isfile(f):
            problems.append(f"{tag}: {what} file {f} does not exist; fix: correct the path in the datalist"
                            + (" or set this rater to null (missing)." if what.startswith("rater") else "."))
        else:
            try:
                shape_cache[f] = _header_shape(f)
            except Exception as e:  # noqa: BLE001 - any reader failure means unreadable
                problems.append(f"{tag}: {what} file {f} cannot be read ({type(e).__name__}); "
                                "fix: re-export it as NIfTI (.nii.gz) or replace the file.")
        return shape_cache[f]

    for i, entry in enumerate(entries):
        name = entry.get("case_id", entry.get("patient_id")) if isinstance(entry, Mapping) else None
        tag = f"entry {i}" + (f" ({name})" if name is not None else "")
        if not isinstance(entry, Mapping):
            problems.append(f"{tag}: is {type(entry).__name__}, not an object; fix: write it as "
                            '{"image": ..., "label": [...]}.')
            continue
        image = entry.get("image")
        image_files = image if isinstance(image, (list, tuple)) else [image]
        if image is None or not all(isinstance(f, (str, os.PathLike)) for f in image_files):
            problems.append(f"{tag}: no image path; fix: add \"image\": \"path/to/image.nii.gz\".")
            image_files = []
        image_shape = None
        for f in map(str, image_files):
            info = shape_of(f, "image", tag)
            if info is None:
                continue
            image_shape = image_shape or info[0]
            if check_finite and info[1]:
                try:
                    if _has_non_finite(f):
                        problems.append(f"{tag}: image file {f} contains NaN or infinite values; "
                                        "fix: replace them (e.g. by 0) or drop this entry.")
                except Exception as e:  # noqa: BLE001
                    problems.append(f"{tag}: image file {f} cannot be read ({type(e).__name__}); fix: replace the file.")
        label = entry.get("label")
        if not isinstance(label, (list, tuple)):
            problems.append(f"{tag}: \"label\" must be a list of per-rater files (null for a missing rater), "
                            f"got {type(label).__name__}; fix: write \"label\": [\"r1.nii.gz\", null, ...].")
            continue
        if num_raters is not None and len(label) != num_raters:
            problems.append(f"{tag}: has {len(label)} rater entries, expected {num_raters}; "
                            "fix: list one file per rater, null where a rater is missing.")
        present = [(r, f) for r, f in enumerate(label) if f is not None]
        if not present:
            problems.append(f"{tag}: no rater annotated this sample (all null); "
                            "fix: drop the entry or add at least one rater file.")
        for r, f in present:
            if not isinstance(f, (str, os.PathLike)):
                problems.append(f"{tag}: rater {r} entry is {type(f).__name__}; fix: use a file path or null.")
                continue
            info = shape_of(str(f), f"rater {r} label", tag)
            if check_shapes and info is not None and image_shape is not None and not _spatial_match(image_shape, info[0]):
                problems.append(f"{tag}: rater {r} label file {f} has shape {info[0]} but image "
                                f"{image_files[0]} has shape {image_shape}; fix: resample the label onto the image grid.")
    if problems:
        listed = problems[:_MAX_LISTED]
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        err = MultiRaterDataError(
            f"{len(problems)} problem(s){where} ({len(entries)} entries checked):\n  - " + "\n  - ".join(listed) + more
        )
        err.problems = problems
        raise err


def split_counts(n: int, split: Sequence[float]) -> tuple[int, int, int]:
    """Entry counts for (training, validation, test) from fractions; validation and test are
    rounded, training takes the rest and must not be empty."""
    if len(split) != 3 or any(f < 0 for f in split) or sum(split) <= 0:
        raise ValueError(f"split must be three non-negative fractions (training, validation, test), got {split}.")
    total = float(sum(split))
    n_val, n_test = round(n * split[1] / total), round(n * split[2] / total)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"split {tuple(split)} leaves no training entry out of {n}.")
    return n_train, n_val, n_test


def split_entries(entries: Sequence[Mapping], split: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> dict:
    """Shuffle ``entries`` by ``seed`` and cut them into training/validation/test (each kept in input order).

    One entry per case or patient is the caller's job: split before expanding a case into slices
    so that no patient lands in two sections.
    """
    n_train, n_val, _ = split_counts(len(entries), split)
    order = np.random.default_rng(seed).permutation(len(entries))
    return {
        "training": [entries[i] for i in sorted(order[:n_train])],
        "validation": [entries[i] for i in sorted(order[n_train : n_train + n_val])],
        "test": [entries[i] for i in sorted(order[n_train + n_val :])],
    }
