"""run_evaluation_table: one evaluator, several settings, one table with hand-known values."""

from __future__ import annotations

import json

import torch

from multirater_monai.engines import MultiRaterEvaluator, run_evaluation_table
from multirater_monai.metrics import SetMetricsSaver
from multirater_monai.networks import MultiRaterMethod


class _Outputs(MultiRaterMethod):
    """Returns ``num_samples`` copies of a fixed 2x2 square (as logits); mode "wide" widens it by one column."""

    output_modes = ("exact", "wide")

    def __init__(self):
        super().__init__(num_raters=2)
        self.count = 1
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @property
    def num_samples(self) -> int:
        return self.count

    def set_sampling(self, num_samples=None, sample_seed=None):
        self.count = int(num_samples)

    def output_groups(self):
        return {"samples": self.count}

    def training_objective(self, image, label, rater_mask=None):
        return {"loss": self.dummy.sum()}

    def forward(self, image):
        mask = torch.zeros(image.shape[0], 1, 4, 4)
        mask[:, :, :2, : (3 if self.output_mode == "wide" else 2)] = 1
        return (mask * 20 - 10).repeat(1, self.count, 1, 1) + self.dummy


def test_rows_per_setting_with_known_dice(tmp_path):
    label = torch.zeros(1, 2, 4, 4)
    label[:, :, :2, :2] = 1  # both raters: the 2x2 square
    data = [{"image": torch.zeros(1, 4, 4), "label": label[0], "rater_mask": torch.tensor([True, True])}]
    net = _Outputs()
    evaluator = MultiRaterEvaluator(
        device=torch.device("cpu"), val_data_loader=torch.utils.data.DataLoader(data, batch_size=1), network=net,
        postprocessing=lambda d: {**d, "pred": torch.sigmoid(d["pred"])} if isinstance(d, dict) else d,
        val_handlers=[SetMetricsSaver(print_table=False)],
    )
    rows = run_evaluation_table(
        evaluator,
        [{"name": "exact x2", "output_mode": "exact", "num_samples": 2},
         {"name": "wide x2", "output_mode": "wide"}],
        output_dir=str(tmp_path), filename="table",
    )
    assert [r["setting"] for r in rows] == ["exact x2", "wide x2"]
    assert rows[0]["dice_max"] == 1.0 and rows[0]["ged"] == 0.0
    # a 2x3 box against the 2x2 square: Dice = 2*4 / (6 + 4) = 0.8; IoU = 4/6, so d = 1/3 and GED = 2/3
    assert abs(rows[1]["dice_match"] - 0.8) < 1e-9
    assert abs(rows[1]["ged"] - 2 / 3) < 1e-9
    saved = json.loads((tmp_path / "table.json").read_text())
    assert [r["setting"] for r in saved["rows"]] == ["exact x2", "wide x2"]
    assert saved["per_image"]["wide x2"][0]["dice_match"] == rows[1]["dice_match"]  # per-image rows kept
    assert (tmp_path / "table.csv").read_text().splitlines()[0].startswith("setting,ged,")


def test_unknown_setting_keys_are_refused(tmp_path):
    import pytest

    evaluator = MultiRaterEvaluator(device=torch.device("cpu"), val_data_loader=[], network=_Outputs())
    with pytest.raises(ValueError, match=r"setting 'x': unknown keys \['calls'\]"):
        run_evaluation_table(evaluator, [{"name": "x", "calls": {"set_sampling": {}}}])
