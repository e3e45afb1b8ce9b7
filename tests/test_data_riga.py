"""``riga``: RIGA-style marked copies drawn here -> filled disc and cup masks per annotator (known pixel counts),
RGB kept, AVAP split (Magrabia = test)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multirater_monai.data import MultiRaterDataError, load_multirater_datalist, validate_multirater_datalist
from multirater_monai.data.riga import contour_masks, prepare_riga
from multirater_monai.transforms import MultiRaterPreprocessing

H, W = 64, 96
LINE = (0, 255, 0)


def _disc_box(k):  # annotator k (1..6): rows, cols inclusive; even starts and even sizes (exact 2x downsizing)
    return 8, 8 + 2 * (12 + k) - 1, 10, 10 + 2 * (20 + k) - 1


def _cup_box(k):
    return 20, 20 + 2 * (3 + k) - 1, 24, 24 + 2 * (4 + k) - 1


def _area(box):
    r0, r1, c0, c1 = box
    return (r1 - r0 + 1) * (c1 - c0 + 1)


def _outline(img, box, gap=0):
    r0, r1, c0, c1 = box
    plain = img[r0 + 3 : r0 + 3 + gap, c1].copy()
    img[r0, c0 : c1 + 1] = LINE
    img[r1, c0 : c1 + 1] = LINE
    img[r0 : r1 + 1, c0] = LINE
    img[r0 : r1 + 1, c1] = LINE
    if gap:  # an open contour: a gap in the right side
        img[r0 + 3 : r0 + 3 + gap, c1] = plain


def _riga(root: Path, layout=None):
    """BinRushed/BinRushed1: 3 images (PNG), MESSIDOR: 2 (TIFF; image2 lacks annotator 3), Magrabia/MagrabiaMale: 1
    (TIFF; annotator 6 left a 4-pixel gap in the disc contour)."""
    layout = layout or {"BinRushed/BinRushed1": ("png", 3), "MESSIDOR": ("tif", 2), "Magrabia/MagrabiaMale": ("tif", 1)}
    rng = np.random.default_rng(0)
    for folder, (ext, n) in layout.items():
        d = root / folder
        d.mkdir(parents=True)
        for i in range(1, n + 1):
            prime = rng.integers(30, 180, (H, W, 3), dtype=np.uint8)
            Image.fromarray(prime).save(d / f"image{i}prime.{ext}")
            for k in range(1, 7):
                if folder == "MESSIDOR" and i == 2 and k == 3:
                    continue
                marked = prime.copy()
                _outline(marked, _disc_box(k), gap=4 if folder.startswith("Magrabia") and k == 6 else 0)
                _outline(marked, _cup_box(k))
                Image.fromarray(marked).save(d / f"image{i}-{k}.{ext}")
    return root


def test_contours_filled_with_known_counts():
    prime = np.full((H, W, 3), 100, np.uint8)
    marked = prime.copy()
    _outline(marked, _disc_box(1))
    _outline(marked, _cup_box(1))
    disc, cup = contour_masks(prime, marked)
    assert int(disc.sum()) == 26 * 42 == _area(_disc_box(1)) and int(cup.sum()) == 8 * 10
    assert not (cup & ~disc).any()
    open_disc = prime.copy()
    _outline(open_disc, _disc_box(1), gap=4)
    _outline(open_disc, _cup_box(1))
    with pytest.raises(ValueError, match=r"1 closed contour\(s\) found, expected 2"):
        contour_masks(prime, open_disc)


def test_prepare_native_size_rgb_split_and_missing_annotators(tmp_path, capsys):
    root = _riga(tmp_path / "RIGA")
    path = prepare_riga(tmp_path / "out", root, image_size=None, val_fraction=0.2, seed=0, progress=False)
    data = json.loads(Path(path).read_text())
    assert data["structures"] == ["disc", "cup"] and data["label_channels"] == 12 and data["num_raters"] == 6
    assert data["in_channels"] == 3 and data["intensity_range"] == [0, 255]
    # AVAP split: 5 BinRushed + MESSIDOR images -> round(0.2 * 5) = 1 validation, 4 training; Magrabia -> test
    assert [len(data[k]) for k in ("training", "validation", "test")] == [4, 1, 1]
    assert {e["source"] for e in data["test"]} == {"Magrabia"}
    assert {e["source"] for e in data["training"] + data["validation"]} == {"BinRushed", "MESSIDOR"}
    unparsed = data["source"]["unparsed"]
    assert len(unparsed) == 2 and "image2prime.tif: annotator 3 has no marked copy" in unparsed[0]
    assert "MagrabiaMale/image1-6.tif: 1 closed contour(s) found" in unparsed[1]
    assert "2 annotation(s) could not be filled" in capsys.readouterr().out
    entries = {e["case_id"]: e for k in ("training", "validation", "test") for e in load_multirater_datalist(path, k)}
    validate_multirater_datalist(list(entries.values()), num_raters=12)
    prep = MultiRaterPreprocessing(spatial_dims=2, num_raters=12)
    s = prep(entries["MESSIDOR_image2"])
    assert s["image"].shape == (3, H, W) and s["label"].shape == (12, H, W)
    disc = [_area(_disc_box(k)) for k in range(1, 7)]
    cup = [_area(_cup_box(k)) for k in range(1, 7)]
    disc[2] = cup[2] = 0  # annotator 3 missing: for both structures
    assert s["label"].sum((1, 2)).tolist() == [float(v) for v in disc + cup]
    assert s["rater_mask"].tolist() == [True, True, False, True, True, True] * 2
    # colour kept: the image is the plain one, channel by channel
    prime = np.asarray(Image.open(root / "MESSIDOR" / "image2prime.tif"))
    assert np.array_equal(s["image"].numpy().transpose(1, 2, 0), prime.astype(np.float32))
    s = prep(entries["Magrabia_MagrabiaMale_image1"])
    assert s["rater_mask"].tolist() == [True] * 5 + [False] + [True] * 5 + [False]


def test_resized_counts_and_bad_layout(tmp_path):
    root = _riga(tmp_path / "RIGA", {"MESSIDOR": ("png", 1), "Magrabia": ("png", 1)})
    path = prepare_riga(tmp_path / "small", root, image_size=(32, 48), val_fraction=0.0, progress=False)
    entry = next(e for e in load_multirater_datalist(path, "training"))
    s = MultiRaterPreprocessing(spatial_dims=2, num_raters=12)(entry)
    # every box starts on an even pixel with an even size: halving keeps exactly a quarter of its pixels
    assert s["image"].shape == (3, 32, 48)
    assert s["label"].sum((1, 2)).tolist() == [_area(_disc_box(k)) / 4 for k in range(1, 7)] + [_area(_cup_box(k)) / 4 for k in range(1, 7)]
    (root / "MESSIDOR" / "image1prime.png").rename(root / "image1prime.png")
    with pytest.raises(MultiRaterDataError) as err:
        prepare_riga(tmp_path / "bad", root, progress=False)
    msg = str(err.value)
    assert "image1prime.png: not under a BinRushed*/, MESSIDOR*/ or Magrabi*/ folder" in msg
    assert "MESSIDOR/image1-1.png: marked copy without its plain image; expected" in msg
    assert not (tmp_path / "bad").exists()


def test_overlay_cli_draws_one_picture_per_structure(tmp_path, capsys):
    from multirater_monai.data.__main__ import main

    root = _riga(tmp_path / "RIGA", {"MESSIDOR": ("png", 1), "Magrabia": ("png", 1)})
    path = prepare_riga(tmp_path / "d", root, image_size=32, val_fraction=0.0, progress=False)
    capsys.readouterr()
    assert main(["overlay", path, "--out", str(tmp_path / "riga.png"), "--section", "test"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "riga_disc.png"), str(tmp_path / "riga_cup.png")]
    assert Image.open(tmp_path / "riga_cup.png").size == (900, 320)  # image and raters panels
    assert main(["overlay", path, "--out", str(tmp_path / "x.png"), "--index", "5"]) == 1
