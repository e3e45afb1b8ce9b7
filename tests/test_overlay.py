"""The overlay PNG shows each rater's contour in its colour at the right place."""

from __future__ import annotations

import numpy as np
from PIL import Image

from multirater_monai.visualize import RATER_COLOURS, save_overlay_png


def _hex(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])


def _count_colour(rgb: np.ndarray, colour: str, tol: int = 40) -> int:
    return int((np.abs(rgb[..., :3].astype(int) - _hex(colour)).sum(-1) < tol).sum())


def test_overlay_draws_present_raters_only(tmp_path):
    image = np.zeros((64, 64), np.float32)
    raters = np.zeros((3, 64, 64), np.uint8)
    raters[0, 20:40, 20:40] = 1   # drawn in colour 0
    raters[1, 10:50, 10:50] = 1   # missing: must not be drawn
    raters[2, 25:35, 25:35] = 1   # drawn in colour 2
    outputs = np.stack([raters[0], raters[2]]).astype(np.float32)
    path = save_overlay_png(str(tmp_path / "o.png"), image, raters, outputs, rater_mask=[True, False, True], title="t")
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert rgb.shape[0] == 320 and rgb.shape[1] == 1200  # 4 panels at 3 x 3.2 inches, 100 dpi
    raters_panel = rgb[:, 300:600]
    assert _count_colour(raters_panel, RATER_COLOURS[0]) > 20
    assert _count_colour(raters_panel, RATER_COLOURS[2]) > 10
    assert _count_colour(raters_panel, RATER_COLOURS[1]) == 0  # the missing rater


def test_overlay_leaves_no_temp_files(tmp_path):
    save_overlay_png(str(tmp_path / "a.png"), np.random.rand(32, 32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_overlay_with_two_output_groups_gives_each_a_panel(tmp_path):
    image = np.zeros((64, 64), np.float32)
    personalized = np.zeros((2, 64, 64), np.float32)
    personalized[1, 20:40, 20:40] = 0.9  # second output of the first group: colour 1
    samples = np.zeros((3, 64, 64), np.float32)
    samples[2, 10:30, 10:30] = 0.8  # third output of the second group: colour 2
    path = save_overlay_png(str(tmp_path / "g.png"), image, outputs={"personalized": personalized, "samples": samples},
                            output_names={"personalized": ["A1", "A2"]})
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert rgb.shape[1] == 1200  # image, personalized, samples, agreement
    first, second = rgb[:, 300:600], rgb[:, 600:900]
    assert _count_colour(first, RATER_COLOURS[1]) > 20 and _count_colour(first, RATER_COLOURS[2]) == 0
    assert _count_colour(second, RATER_COLOURS[2]) > 20  # the contour drawn in the samples panel


def test_overlay_shows_colour_images_in_colour(tmp_path):
    image = np.zeros((3, 32, 32), np.float32)
    image[0] = 1.0  # pure red
    path = save_overlay_png(str(tmp_path / "rgb.png"), image, np.zeros((2, 32, 32)), title="rgb")
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert _count_colour(rgb[:, :300], "#ff0000") > 1000  # the image panel is red, not grey
    # four contrasts: the first one is shown in grey
    save_overlay_png(str(tmp_path / "mr.png"), np.random.rand(4, 32, 32))
