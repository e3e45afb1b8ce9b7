"""benchmarks/compare_methods.py: the per-rater row and the claim table from hand-made evaluation rows."""

from __future__ import annotations

import importlib.util

from .conftest import REPO_ROOT


def _compare():
    spec = importlib.util.spec_from_file_location("compare_methods", REPO_ROOT / "benchmarks" / "compare_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(label, averages_by_image):
    """One single-rater U-Net run: per image its soft Dice against raters A1, A2."""
    per_image = [{"image": image, "average_A1": a1, "average_A2": a2} for image, (a1, a2) in averages_by_image.items()]
    mean = [sum(v[k] for v in averages_by_image.values()) / len(averages_by_image) for k in (0, 1)]
    return {"method": label, "average_A1": mean[0], "average_A2": mean[1], "per_image": per_image}


def test_per_rater_row_scores_run_k_against_rater_k_image_by_image():
    compare = _compare()
    rows = [_run("U-Net (A1)", {"x": (0.8, 0.1), "y": (0.6, 0.1)}), _run("U-Net (A2)", {"x": (0.1, 0.4), "y": (0.1, 0.2)})]
    row = compare.per_rater_row(rows, num_raters=2, structures=[""])
    # summary: (mean of A1-run on A1 = 0.7) and (A2-run on A2 = 0.3) -> 0.5; per image: x (0.8 + 0.4) / 2, y (0.6 + 0.2) / 2
    assert abs(row["average"] - 0.5) < 1e-12 and row["mean_voting"] is None
    assert {r["image"]: round(r["average"], 10) for r in row["per_image"]} == {"x": 0.6, "y": 0.4}
    assert compare.per_rater_row(rows[:1], num_raters=2, structures=[""]) is None  # a rater's run is missing
    assert row["method"] == compare.DIAGONAL


def test_table2_view_scores_each_run_against_every_rater():
    compare = _compare()
    rows = [_run("U-Net (A1)", {"x": (0.8, 0.1), "y": (0.6, 0.1)}), _run("U-Net (A2)", {"x": (0.1, 0.4), "y": (0.1, 0.2)})]
    row = compare.per_rater_all_raters_row(rows, num_raters=2, structures=[""])
    # run A1: (0.7 + 0.1) / 2 = 0.4 over both raters; run A2: (0.1 + 0.3) / 2 = 0.2 -> 0.3 (the diagonal gives 0.5)
    assert abs(row["average"] - 0.3) < 1e-12 and row["method"] == compare.ALL_RATERS
    # per image: x ((0.8 + 0.1) / 2 + (0.1 + 0.4) / 2) / 2 = 0.35; y ((0.6 + 0.1) / 2 + (0.1 + 0.2) / 2) / 2 = 0.25
    assert {r["image"]: round(r["average"], 10) for r in row["per_image"]} == {"x": 0.35, "y": 0.25}
    assert compare.per_rater_all_raters_row(rows[1:], num_raters=2, structures=[""]) is None


def test_claim_table_pairs_images_over_seeds_and_gives_the_verdict():
    compare = _compare()

    def row(method, values):
        return {"method": method, "mean_voting": sum(values) / len(values),
                "per_image": [{"image": f"i{k}", "mean_voting": v} for k, v in enumerate(values)]}

    # AVAP is better by 0.05 on every image in both seeds: the interval is the point 0.05 -> holds
    rows_by_seed = {0: [row("AVAP", [0.85, 0.75, 0.65]), row("U-Net (majority vote)", [0.80, 0.70, 0.60])],
                    1: [row("AVAP", [0.86, 0.76, 0.66]), row("U-Net (majority vote)", [0.81, 0.71, 0.61])]}
    lines = compare.claim_lines("avap", rows_by_seed, [""])
    assert len(lines) == 3  # header, rule, the one claim whose two rows exist
    assert "| mean_voting | +0.0500 | [+0.0500, +0.0500] (3 images) | holds |" in lines[2]


def test_only_selects_by_word_or_by_exact_label():
    compare = _compare()
    labels = [label for label, _, _ in compare.methods("dpersona", 2, per_rater=True, ablation=True)]
    keep = [label for label in labels if compare.selected(label, ["U-Net (", "=ProSeg"])]
    assert keep == ["U-Net (majority vote)", "U-Net (random rater)", "U-Net (STAPLE)", "U-Net (A1)", "U-Net (A2)", "ProSeg"]
    assert [label for label in labels if compare.selected(label, ["proseg"])] == [
        "ProSeg", "ProSeg without tau", "ProSeg without Z", "ProSeg without tau and Z", "ProSeg with one encoder per rater"]
    assert compare.selected("Prob. U-Net", None)


def test_personalization_reports_gains_only_for_raters_whose_own_unet_shows_a_style():
    compare = _compare()

    def row(method, a1, a2):
        per_image = [{"image": f"i{k}", "dice_A1": x, "dice_A2": y} for k, (x, y) in enumerate(zip(a1, a2))]
        return {"method": method, "dice_A1": sum(a1) / 3, "per_image": per_image}

    # A1's own U-Net beats STAPLE by 0.1 on every image (a style); A2's own U-Net does not (equal)
    rows = [row("U-Net (STAPLE)", [0.7, 0.6, 0.5], [0.8, 0.7, 0.6]),
            row("U-Net (A1)", [0.8, 0.7, 0.6], [0.8, 0.7, 0.6]),
            row("U-Net (A2)", [0.7, 0.6, 0.5], [0.8, 0.7, 0.6]),
            row("D-Persona (Stage II)", [0.72, 0.62, 0.52], [0.9, 0.9, 0.9])]
    lines = compare.personalization_lines({0: rows}, num_raters=2)
    assert lines[2] == "| A1 | U-Net (A1) (the rater's style) | +0.1000 | [+0.1000, +0.1000] | holds |"
    assert lines[3] == "| A1 | D-Persona (Stage II) | +0.0200 | [+0.0200, +0.0200] | holds |"
    # A2 shows no style: its own U-Net row is printed, the personalized methods' gains are not
    assert lines[4].startswith("| A2 | U-Net (A2) (the rater's style: not shown) | +0.0000 |")
    assert len(lines) == 5
    assert compare.personalization_lines({0: rows[1:]}, num_raters=2) == []  # no consensus row


def test_best_unet_row_is_chosen_per_seed_and_the_smallest_gap_decides():
    compare = _compare()
    rows = {0: [{"method": "U-Net (majority vote)", "dice_mean": 0.80}, {"method": "U-Net (A1)", "dice_mean": 0.84},
                {"method": "ProSeg (personalized)", "dice_mean": 0.83}, {"method": "Prob. U-Net (50 samples)"}],
            1: [{"method": "U-Net (majority vote)", "dice_mean": 0.85}, {"method": "U-Net (A1)", "dice_mean": 0.81},
                {"method": "ProSeg (personalized)", "dice_mean": 0.82}]}
    lines = compare.best_unet_lines(rows)
    assert len(lines) == 3  # header, separator, ProSeg (the Prob. U-Net row has no Dice_mean)
    # seed 0: 0.83 - 0.84 (A1) = -0.01; seed 1: 0.82 - 0.85 (majority vote) = -0.03 -> not within 0.02
    assert "seed 0: 0.8300 vs 0.8400 (U-Net (A1), best of 2)" in lines[2]
    assert "seed 1: 0.8200 vs 0.8500 (U-Net (majority vote), best of 2)" in lines[2]
    assert lines[2].endswith("| -0.0300 | no |")
    assert compare.best_unet_lines(rows, margin=0.031)[2].endswith("| -0.0300 | yes |")
    assert compare.best_unet_lines({0: rows[0][:2]}) == []  # no personalized row
