"""``riga``: the RIGA fundus benchmark (optic disc and cup, six annotators) in its distributed layout.

RIGA (Almazroa et al. 2017) holds 750 colour fundus images from three sources: MESSIDOR (460),
BinRushed (195) and Magrabia (95). For each image the release has the plain image,
``imageNprime.<ext>``, and six copies, ``imageN-1.<ext>`` ... ``imageN-6.<ext>``, on which one
annotator each drew the optic disc and the optic cup contours. Sources are told apart by the
top-level folder under ``root`` (its name starts with ``BinRushed``, ``MESSIDOR`` or ``Magrabi``);
any sub-folders below (``BinRushed1-Corrected``, ``MagrabiaMale`` ...) are searched, names are
matched without regard to case, and ``.tif``/``.jpg``/``.png``/``.bmp`` are read.

From marked copy to masks (``contour_masks``), and why
------------------------------------------------------
1. The contour pixels are where the copy differs from the plain image: the largest absolute
   difference over the three colour channels above ``line_threshold`` (JPEG noise of the
   BinRushed copies stays below it; the drawn lines are far above).
2. A binary closing with a disk of ``close_radius`` px bridges one-pixel gaps in a drawn line.
3. Each connected line (8-connected) is filled (``scipy.ndimage.binary_fill_holes``); a line whose
   filling adds less than its own length is open, not a contour, and is dropped, as are lines of
   fewer than ``min_line_px`` pixels (specks).
4. The closed contour with the largest filled area is the disc, the next the cup; the cup must lie
   inside the disc. Both masks include their contour line.
A copy where this fails (no two closed contours, cup outside disc) is reported and that
annotator is a missing rater (``null``) for the image, never a guessed mask; the counts are in
the datalist header (``source.unparsed``) and printed.

Samples: the image is kept in colour and written as ``(H, W, 1, 3)`` uint8 NIfTI (``slice_io``), so
it loads as ``(3, H, W)``; bundles take it with ``in_channels 3`` and ``intensity_range [0, 255]``.
Images and masks are resized to ``image_size`` (default 256 x 256, as AVAP does for every image;
``None`` keeps the native size): bilinear for the image, area fraction >= 0.5 for the masks.
Labels follow the multi-structure contract of ``datalist``: 12 files per entry, structure-major
(disc A1..A6, then cup A1..A6), ``"structures": ["disc", "cup"]``, ``"label_channels": 12``.
Split as the AVAP paper: BinRushed and MESSIDOR for training (``val_fraction`` of them, seeded,
for validation), Magrabia for test.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..utils.atomic import atomic_output_dir
from ..utils.errors import MultiRaterDataError
from .datalist import write_multirater_datalist
from .slice_io import channels_last_image, save_nifti, save_rater_masks

__all__ = ["RIGA_SOURCES", "riga_images", "contour_masks", "prepare_riga"]

# folder-name prefix (lower case) -> source name, and the AVAP split of each source
RIGA_SOURCES = {"binrushed": "BinRushed", "messidor": "MESSIDOR", "magrabi": "Magrabia"}
TEST_SOURCES = ("Magrabia",)
NUM_ANNOTATORS = 6
STRUCTURES = ["disc", "cup"]
_EXT = r"\.(?:tif|tiff|jpg|jpeg|png|bmp)$"
_PRIME = re.compile(r"^(?P<stem>.+?)prime" + _EXT, re.IGNORECASE)
_MARKED = re.compile(r"^(?P<stem>.+?)-(?P<rater>\d+)" + _EXT, re.IGNORECASE)


def _source_of(rel: Path) -> str | None:
    top = rel.parts[0].lower() if len(rel.parts) > 1 else ""
    return next((name for prefix, name in RIGA_SOURCES.items() if top.startswith(prefix)), None)


def riga_images(root: str | os.PathLike) -> list[dict]:
    """Every plain image with its marked copies: ``{"id", "source", "prime", "marked": [path or None] * 6}``.

    Layout problems (a copy without its plain image, a plain image without any copy, an annotator
    number outside 1..6, no source folder) are gathered into one ``MultiRaterDataError``.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise MultiRaterDataError(f"RIGA folder {root} does not exist; fix: pass root= the folder holding BinRushed/, "
                                  "MESSIDOR/ and Magrabia/.")
    groups: dict[tuple[Path, str], dict] = {}
    problems = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        prime, marked = _PRIME.match(path.name), _MARKED.match(path.name)
        if not (prime or marked):
            continue
        source = _source_of(rel)
        if source is None:
            problems.append(f"{path}: not under a BinRushed*/, MESSIDOR*/ or Magrabi*/ folder of {root}; fix: keep the "
                            "release's folder layout.")
            continue
        stem = (prime or marked).group("stem").lower()
        g = groups.setdefault((path.parent, stem), {"source": source, "prime": None, "marked": [None] * NUM_ANNOTATORS})
        if prime:
            g["prime"] = str(path)
        else:
            r = int(marked.group("rater"))
            if not 1 <= r <= NUM_ANNOTATORS:
                problems.append(f"{path}: annotator {r}, expected 1..{NUM_ANNOTATORS}; fix: rename or remove the file.")
                continue
            g["marked"][r - 1] = str(path)
    out = []
    for (parent, stem), g in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), _natural(kv[0][1]))):
        if g["prime"] is None:
            first = next(m for m in g["marked"] if m)
            problems.append(f"{first}: marked copy without its plain image; expected {parent / (stem + 'prime')}.<ext>; "
                            "fix: add the plain image (the contours are found by comparing with it).")
            continue
        if not any(g["marked"]):
            problems.append(f"{g['prime']}: no marked copies {stem}-1 .. {stem}-{NUM_ANNOTATORS}; fix: add them or remove "
                            "the image.")
            continue
        sub = "_".join(parent.relative_to(root).parts)
        out.append({"id": re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{sub}_{stem}"), **g})
    if problems:
        raise MultiRaterDataError(f"{len(problems)} problem(s) in {root}:\n  - " + "\n  - ".join(problems))
    if not out:
        raise MultiRaterDataError(f"no RIGA image (imageNprime.tif with imageN-1.tif ...) under {root}; fix: pass root= the "
                                  "folder holding BinRushed/, MESSIDOR/ and Magrabia/.")
    return out


def _natural(stem: str):
    digits = re.findall(r"\d+", stem)
    return (int(digits[-1]) if digits else -1, stem)


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any reader failure is an unreadable file
        raise MultiRaterDataError(f"{path} cannot be read as an image ({type(e).__name__}: {e}); fix: replace the file.") from e


def contour_masks(prime: np.ndarray, marked: np.ndarray, line_threshold: int = 40, close_radius: int = 1,
                  min_line_px: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(disc, cup) bool masks from the contours drawn on ``marked`` (H, W, 3) over ``prime``; see the module
    docstring. Raises ``ValueError`` saying what was found when there are not two nested closed contours."""
    # |marked - prime| in uint8 without a wider copy (the full-size images are 3-5 megapixels)
    diff = (np.maximum(marked, prime) - np.minimum(marked, prime)).max(axis=-1)
    line = diff > line_threshold
    if close_radius > 0 and line.any():
        # closing only around the drawn pixels (a small part of the image), with a margin for the disk
        rows, cols = np.flatnonzero(line.any(1)), np.flatnonzero(line.any(0))
        pad = 2 * close_radius + 1
        box = (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1), slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))
        yy, xx = np.mgrid[-close_radius : close_radius + 1, -close_radius : close_radius + 1]
        disk = (yy * yy + xx * xx) <= close_radius * close_radius
        line[box] = ndimage.binary_closing(line[box], structure=disk, border_value=0)
    labels, n = ndimage.label(line, structure=np.ones((3, 3), bool))
    closed = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[box] == k
        size = int(comp.sum())
        if size < min_line_px:
            continue
        filled = ndimage.binary_fill_holes(comp)
        if int(filled.sum()) - size < size:  # filling added less than the line itself: an open curve
            continue
        full = np.zeros(line.shape, bool)
        full[box] = filled
        closed.append(full)
    if len(closed) < 2:
        raise ValueError(f"{len(closed)} closed contour(s) found, expected 2 (disc and cup)")
    closed.sort(key=lambda m: int(m.sum()), reverse=True)
    disc, cup = closed[0], closed[1]
    if (cup & ~disc).sum() > 0.05 * cup.sum():
        raise ValueError("the second contour is not inside the first, expected the cup inside the disc")
    return disc, cup & disc


def _resize(image: np.ndarray, masks: list, size) -> tuple[np.ndarray, list]:
    from PIL import Image

    if size is None:
        return image, masks
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    out = []
    for m in masks:
        # the share of each output pixel the mask covers, kept where it is at least half
        out.append(None if m is None else np.asarray(Image.fromarray(m.astype(np.float32)).resize((w, h), Image.BOX)) >= 0.5)
    return image, out


def prepare_riga(
    out_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    image_size: int | tuple[int, int] | None = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    line_threshold: int = 40,
    close_radius: int = 1,
    min_line_px: int = 10,
    progress: bool = True,
    overwrite: bool = False,
) -> str:
    """Fill the six annotators' disc and cup contours into masks and write the AVAP split; returns the datalist path.

    Args:
        out_dir: new or empty folder for ``images/``, ``labels/`` and ``datalist.json``.
        root: the RIGA folder (``BinRushed/``, ``MESSIDOR/``, ``Magrabia/`` below it).
        image_size: output size (int or (H, W)); None keeps each image's native size.
        val_fraction: share of the BinRushed + MESSIDOR images held out for validation (seeded by ``seed``).
        line_threshold, close_radius, min_line_px: contour extraction, see the module docstring.
    """
    if root is None:
        raise MultiRaterDataError("riga needs root=; fix: pass --root /path/to/RIGA.")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise MultiRaterDataError(f"val_fraction={val_fraction}; fix: choose a share in [0, 1).")
    images = riga_images(root)
    from tqdm.auto import tqdm

    train_pool = [g["id"] for g in images if g["source"] not in TEST_SOURCES]
    n_val = int(round(float(val_fraction) * len(train_pool)))
    val_ids = set(np.random.default_rng([int(seed), 19]).permutation(train_pool)[:n_val].tolist())
    sections = {"training": [], "validation": [], "test": []}
    unparsed, skipped, problems = [], [], []
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for g in tqdm(images, desc="riga images", unit="image", disable=not progress):
            prime = _read_rgb(g["prime"])
            disc, cup = [None] * NUM_ANNOTATORS, [None] * NUM_ANNOTATORS
            for r, path in enumerate(g["marked"]):
                if path is None:
                    unparsed.append(f"{g['prime']}: annotator {r + 1} has no marked copy")
                    continue
                marked = _read_rgb(path)
                if marked.shape != prime.shape:
                    problems.append(f"{path}: size {marked.shape[:2]} differs from {g['prime']} {prime.shape[:2]}; "
                                    "fix: use the release's files (the copy must be the plain image with contours drawn on it).")
                    continue
                try:
                    disc[r], cup[r] = contour_masks(prime, marked, line_threshold, close_radius, min_line_px)
                except ValueError as e:
                    unparsed.append(f"{path}: {e}")
            if not any(m is not None for m in disc):
                skipped.append(g["prime"])
                continue
            image, masks = _resize(prime, disc + cup, image_size)
            save_nifti(tmp / "images" / f"{g['id']}.nii.gz", channels_last_image(image, 2))
            names = [f"labels/{g['id']}_{STRUCTURES[c // NUM_ANNOTATORS]}_a{c % NUM_ANNOTATORS + 1}.nii.gz"
                     for c in range(len(masks))]
            labels = save_rater_masks(tmp, names, masks)
            section = "test" if g["source"] in TEST_SOURCES else ("validation" if g["id"] in val_ids else "training")
            sections[section].append({"image": f"images/{g['id']}.nii.gz", "label": labels, "patient_id": g["id"],
                                      "case_id": g["id"], "source": g["source"]})
        if problems:
            raise MultiRaterDataError(f"{len(problems)} problem(s) in {root} (nothing written):\n  - " + "\n  - ".join(problems))
        if not any(sections.values()):
            raise MultiRaterDataError(f"no annotator contour in {root} could be filled ({len(unparsed)} reported, first: "
                                      f"{unparsed[:1]}); fix: check line_threshold= and close_radius=.")
        by_source = Counter((e["source"], k) for k, v in sections.items() for e in v)
        write_multirater_datalist(
            tmp / "datalist.json",
            sections,
            name="riga",
            description="RIGA colour fundus images (BinRushed, MESSIDOR, Magrabia), six annotators' optic disc and cup "
                        "contours filled into masks; AVAP split (Magrabia = test)",
            num_raters=NUM_ANNOTATORS,
            rater_names=[f"A{r + 1}" for r in range(NUM_ANNOTATORS)],
            structures=list(STRUCTURES),
            label_channels=NUM_ANNOTATORS * len(STRUCTURES),
            spatial_dims=2,
            in_channels=3,
            intensity_range=[0, 255],
            image_size=None if image_size is None else list(np.broadcast_to(image_size, 2).tolist()),
            source={"root": str(Path(root).absolute()), "seed": int(seed), "val_fraction": float(val_fraction),
                    "line_threshold": int(line_threshold), "close_radius": int(close_radius),
                    "min_line_px": int(min_line_px),
                    "images_by_source_and_section": {f"{s}/{k}": n for (s, k), n in sorted(by_source.items())},
                    "unparsed": unparsed, "images_skipped": skipped},
        )
    if unparsed or skipped:
        print(f"riga: {len(unparsed)} annotation(s) could not be filled and are missing raters; "
              f"{len(skipped)} image(s) skipped (no annotation left):\n  " + "\n  ".join(unparsed[:20] + skipped[:20]))
    return str(Path(out_dir).absolute() / "datalist.json")
