"""Set-metric ignite handlers inside a real ``SupervisedEvaluator`` with known outputs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import IterationEvents, SupervisedEvaluator

from multirater_monai.metrics import (
    DiceMatch,
    DiceMax,
    DiceMean,
    GeneralizedEnergyDistance,
    SetMetricsSaver,
    SoftDice,
    from_engine_with_rater_mask,
)

# The network is the identity: each image *is* its prediction set (S=2 probability channels), so the
# evaluator's outputs are known exactly. Two 2x2 images, flattened row-major:
#   image 1: P = [[1,.75,.25,0], [.75,.25,.375,0]] -> binary [1,1,0,0], [1,0,0,0]; A = [1,1,0,0], [0,1,1,0]
#     GED 1/2, d_pa 13/24, Dice_soft 2/5, Dice_max 3/4, Dice_match 7/12, per rater [1, 0]
#     (worked out in tests/test_set_metrics.py, header comment)
#   image 2: P = [X, Y], A = [X, (rater 2 missing: zero channel)], X = [1,1,0,0], Y = [0,0,1,1]
#     d(X,X)=0, d(Y,X)=1 -> d_pa 1/2; d_pp (0+1+1+0)/4 = 1/2; d_aa 0 -> GED 1/2
#     Dice matrix [[1, nan], [0, nan]] -> Dice_max 1, Dice_match 1, per rater [1, nan]
#     Dice_soft: mean(P) = .5 everywhere vs X: t=.1,.3 -> 2*2/(4+2) = 2/3, t>=.5 -> 0 -> 4/15
# Means over the two images: GED 1/2, d_pa 25/48, Dice_soft 1/3, Dice_max 7/8, Dice_match 19/24,
#   Dice_A1 = (1+1)/2 = 1, Dice_A2 = 0 (image 1 only), Dice_mean = (1+0)/2 = 1/2.
# If rater 2 of image 2 were taken as present (an empty mask): Dice matrix [[1, 0], [0, 0]]
#   (X vs empty: 0/2; Y vs empty: 0/2) -> Dice_max (1 + 0)/2 = 1/2 -> mean over images (3/4 + 1/2)/2 = 5/8.

X = [1.0, 1, 0, 0]
Y = [0.0, 0, 1, 1]


def _data(with_mask: bool = True) -> list[dict]:
    items = [
        {
            "image": MetaTensor(
                torch.tensor([[1.0, 0.75, 0.25, 0.0], [0.75, 0.25, 0.375, 0.0]]).reshape(2, 2, 2),
                meta={"filename_or_obj": "case1.nii.gz"},
            ),
            "label": torch.tensor([[1.0, 1, 0, 0], [0, 1, 1, 0]]).reshape(2, 2, 2),
            "rater_mask": torch.tensor([True, True]),
        },
        {
            "image": MetaTensor(torch.tensor([X, Y]).reshape(2, 2, 2), meta={"filename_or_obj": "case2.nii.gz"}),
            "label": torch.tensor([X, [0.0] * 4]).reshape(2, 2, 2),
            "rater_mask": torch.tensor([True, False]),
        },
    ]
    if not with_mask:
        for item in items:
            del item["rater_mask"]
    return items


def _evaluator(data, key_val_metric, additional_metrics=None, iteration_update=None):
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=2),
        network=torch.nn.Identity(),
        key_val_metric=key_val_metric,
        additional_metrics=additional_metrics,
        iteration_update=iteration_update,
    )


def _iteration_with_mask_in_output(engine, batchdata):
    # an engine that puts rater_mask into its output, as the project's evaluators do; firing
    # MODEL_COMPLETED lets MONAI decollate the output into a list of per-image dicts
    image, label = batchdata["image"].to(engine.state.device), batchdata["label"].to(engine.state.device)
    with torch.no_grad():
        pred = engine.network(image)
    engine.state.output = {"image": image, "label": label, "pred": pred, "rater_mask": batchdata["rater_mask"]}
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
    assert isinstance(engine.state.output, list) and "rater_mask" in engine.state.output[0]
    return engine.state.output


@pytest.mark.parametrize("mask_in_output", [False, True])
def test_handlers_in_supervised_evaluator(tmp_path, mask_in_output):
    evaluator = _evaluator(
        _data(),
        key_val_metric={"val_ged": GeneralizedEnergyDistance()},
        additional_metrics={
            "val_dice_soft": SoftDice(),
            "val_dice_max": DiceMax(),
            "val_dice_match": DiceMatch(),
            "val_dice_mean": DiceMean(),
        },
        iteration_update=_iteration_with_mask_in_output if mask_in_output else None,
    )
    saver = SetMetricsSaver(output_dir=str(tmp_path / "eval"), rater_names=["A1", "A2"])
    saver.attach(evaluator)
    evaluator.run()

    metrics = evaluator.state.metrics
    assert metrics["val_ged"] == pytest.approx(1 / 2)
    assert metrics["val_dice_soft"] == pytest.approx(1 / 3)
    assert metrics["val_dice_max"] == pytest.approx(7 / 8)
    assert metrics["val_dice_match"] == pytest.approx(19 / 24)
    assert metrics["val_dice_mean"] == pytest.approx(1 / 2)
    assert evaluator.state.metric_details["val_dice_max"].flatten().tolist() == pytest.approx([3 / 4, 1.0])

    summary = evaluator.state.set_metrics["summary"]
    assert summary["d_pa"] == pytest.approx(25 / 48)
    assert summary["dice_A1"] == pytest.approx(1.0) and summary["dice_A2"] == pytest.approx(0.0)
    assert summary["dice_mean"] == pytest.approx(1 / 2)

    doc = json.loads((tmp_path / "eval" / "set_metrics.json").read_text())
    assert doc["num_images"] == 2 and doc["compat"] == "default"
    assert doc["summary"]["dice_match"] == pytest.approx(19 / 24)
    assert doc["per_image"][1]["dice_A2"] is None  # missing rater: NaN written as null
    with open(tmp_path / "eval" / "set_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["case1.nii.gz", "case2.nii.gz", "mean"]
    assert float(rows[2]["dice_soft"]) == pytest.approx(1 / 3, abs=1e-6)
    assert not list((tmp_path / "eval").glob(".*partial"))  # nothing half-written left behind


def test_without_rater_mask_every_rater_is_present():
    evaluator = _evaluator(_data(with_mask=False), key_val_metric={"val_dice_max": DiceMax()})
    evaluator.run()
    assert evaluator.state.metrics["val_dice_max"] == pytest.approx(5 / 8)  # see header comment


def test_compat_handler_and_two_item_output_transform():
    # a (pred, label) output transform: rater_mask comes from the batch
    evaluator = _evaluator(
        _data(),
        key_val_metric={
            "val_ged": GeneralizedEnergyDistance(
                compat="dpersona", output_transform=lambda out: ([o["pred"] for o in out], [o["label"] for o in out])
            )
        },
    )
    evaluator.run()
    # no empty masks among the present ones, so compat equals default up to the 1e-8 smoothing
    assert evaluator.state.metrics["val_ged"] == pytest.approx(1 / 2, abs=1e-6)


def test_output_transform_errors():
    with pytest.raises(ValueError, match="output_transform"):
        from_engine_with_rater_mask()(torch.zeros(2))
    assert from_engine_with_rater_mask()({"pred": 1, "label": 2}) == (1, 2, None)
