"""Ignite handlers for the set metrics, following ``monai.handlers.MeanDice``.

Use them as ``key_val_metric`` / ``additional_metrics`` of a ``monai.engines.SupervisedEvaluator``::

    evaluator = SupervisedEvaluator(
        ..., key_val_metric={"val_ged": GeneralizedEnergyDistance()},
        additional_metrics={"val_dice_max": DiceMax(), "val_dice_match": DiceMatch()},
    )
    SetMetricsSaver(output_dir="eval").attach(evaluator)   # the whole table, as CSV + JSON

By default each handler reads ``pred``, ``label`` and ``rater_mask`` from the engine output
(:py:func:`from_engine_with_rater_mask`). Where the output carries no ``rater_mask``, the
handler takes it from the current batch (``engine.state.batch``), where the loading transforms
put it; where neither has one, every rater is treated as present. The ``sample_index`` that
:class:`~multirater_monai.engines.MultiRaterEvaluator` adds to each output item is passed on, so that under
``torchrun`` the gathered tables are in dataset order (:mod:`multirater_monai.metrics.cumulative`);
:class:`SetMetricsSaver` writes and prints on rank 0 only.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.handlers import IgniteMetricHandler
from monai.utils import IgniteInfo, MetricReduction, min_version, optional_import

from multirater_monai.utils.atomic import atomic_write_json, atomic_write_text
from multirater_monai.utils.distributed import gather_in_order, is_main_process

from .cumulative import (
    DiceMatchMetric,
    DiceMaxMetric,
    DiceMeanMetric,
    GeneralizedEnergyDistanceMetric,
    SetMetricsTable,
    SoftDiceMetric,
)
from .set_metrics import DEFAULT_THRESHOLDS

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
reinit__is_reduced, _ = optional_import(
    "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "reinit__is_reduced", as_type="decorator"
)

__all__ = [
    "SetMetricHandler",
    "from_engine_with_rater_mask",
    "format_metric_table",
    "GeneralizedEnergyDistance",
    "SoftDice",
    "DiceMax",
    "DiceMatch",
    "DiceMean",
    "SetMetricsSaver",
    "sample_indices_of",
]

SAMPLE_INDEX_KEY = "sample_index"


def from_engine_with_rater_mask(
    pred_key: str = "pred", label_key: str = "label", mask_key: str = "rater_mask"
) -> Callable:
    """Like ``monai.handlers.from_engine([pred_key, label_key, mask_key])``, but the mask may be absent.

    Returns a callable mapping the engine output (a dict, or the decollated list of dicts) to
    ``(pred, label, rater_mask)`` with ``rater_mask`` None where the output has none.
    """

    def _wrapper(data: Any) -> tuple[Any, Any, Any]:
        if isinstance(data, dict):
            return data[pred_key], data[label_key], data.get(mask_key)
        if isinstance(data, list) and data and isinstance(data[0], dict):
            masks = [d.get(mask_key) for d in data]
            return (
                [d[pred_key] for d in data],
                [d[label_key] for d in data],
                None if any(m is None for m in masks) else masks,
            )
        raise ValueError(
            f"cannot read {pred_key!r}/{label_key!r} from engine output of type {type(data).__name__}; "
            "pass an output_transform that returns (pred, label[, rater_mask])."
        )

    return _wrapper


def sample_indices_of(output: Any, key: str = SAMPLE_INDEX_KEY) -> list[int] | None:
    """The dataset index of each image of an evaluator output (a dict, or the decollated list); None if absent."""
    if isinstance(output, dict):
        value = output.get(key)
        return None if value is None else [int(i) for i in torch.as_tensor(value).reshape(-1).tolist()]
    if isinstance(output, list) and output and isinstance(output[0], dict):
        values = [item.get(key) for item in output]
        return None if any(v is None for v in values) else [int(v) for v in values]
    return None


def _rater_mask_from_batch(batch: Any, mask_key: str = "rater_mask") -> Any:
    if isinstance(batch, dict):
        return batch.get(mask_key)
    if isinstance(batch, list) and batch and isinstance(batch[0], dict):
        masks = [b.get(mask_key) for b in batch]
        return None if any(m is None for m in masks) else masks
    return None


class SetMetricHandler(IgniteMetricHandler):
    """``IgniteMetricHandler`` whose ``update`` forwards ``rater_mask`` to the cumulative metric.

    ``output_transform`` defaults to ``from_engine_with_rater_mask()``: pred, label and rater_mask
    of the evaluator's output.
    """

    def __init__(self, metric_fn: Any, output_transform: Callable | None = None, save_details: bool = True) -> None:
        super().__init__(
            metric_fn=metric_fn,
            output_transform=output_transform or from_engine_with_rater_mask(),
            save_details=save_details,
        )
        # ignite would otherwise "unroll" a (list, list) output into one update per image, which
        # separates each image from its rater mask; the cumulative metric handles lists itself
        self._skip_unrolling = True

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Args: output: ``(pred, label)`` or ``(pred, label, rater_mask)``."""
        if len(output) not in (2, 3):
            raise ValueError(f"output must be (pred, label) or (pred, label, rater_mask), got length {len(output)}.")
        y_pred, y = output[0], output[1]
        rater_mask = output[2] if len(output) == 3 else None
        if rater_mask is None and self._engine is not None:
            rater_mask = _rater_mask_from_batch(getattr(self._engine.state, "batch", None))
        indices = None if self._engine is None else sample_indices_of(getattr(self._engine.state, "output", None))
        self.metric_fn(y_pred, y, rater_mask=rater_mask, sample_index=indices)


class GeneralizedEnergyDistance(SetMetricHandler):
    """Mean generalized energy distance over images (lower is better); terms are kept in the metric's buffers.

    Args:
        compat: ``"default"`` or ``"dpersona"`` (the published evaluation code's conventions).
        unbiased: within-set means over distinct pairs only (see ``generalized_energy_distance``).
        reduction: MONAI reduction over images (NaN-aware).
        output_transform: maps the engine output to ``(pred, label[, rater_mask])``.
        save_details: keep the per-image values in ``engine.state.metric_details[name]``.
    """

    def __init__(
        self,
        compat: str = "default",
        unbiased: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable | None = None,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=GeneralizedEnergyDistanceMetric(reduction=reduction, compat=compat, unbiased=unbiased),
            output_transform=output_transform,
            save_details=save_details,
        )


class SoftDice(SetMetricHandler):
    """Mean Dice_soft over images. Args as :py:class:`GeneralizedEnergyDistance`, plus ``thresholds``."""

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        compat: str = "default",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable | None = None,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=SoftDiceMetric(thresholds=thresholds, reduction=reduction, compat=compat),
            output_transform=output_transform,
            save_details=save_details,
        )


class DiceMax(SetMetricHandler):
    """Mean Dice_max over images. Args as :py:class:`GeneralizedEnergyDistance`."""

    def __init__(
        self,
        compat: str = "default",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable | None = None,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=DiceMaxMetric(reduction=reduction, compat=compat),
            output_transform=output_transform,
            save_details=save_details,
        )


class DiceMatch(SetMetricHandler):
    """Mean Dice_match over images (images with fewer outputs than raters are skipped as NaN)."""

    def __init__(
        self,
        compat: str = "default",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable | None = None,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=DiceMatchMetric(reduction=reduction, compat=compat),
            output_transform=output_transform,
            save_details=save_details,
        )


class DiceMean(SetMetricHandler):
    """Dice_mean of personalized outputs: the mean over raters of each rater's identity Dice (Dice_Ai).

    Needs one output per rater (S == R) or a single output (S == 1).
    """

    def __init__(
        self, compat: str = "default", output_transform: Callable | None = None, save_details: bool = True
    ) -> None:
        super().__init__(
            metric_fn=DiceMeanMetric(compat=compat),
            output_transform=output_transform,
            save_details=save_details,
        )


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


class SetMetricsSaver:
    """Compute the whole set-metric table over an evaluation run and keep / save it.

    At ``EPOCH_COMPLETED`` it stores ``{"summary": {...}, "per_image": [...]}`` in
    ``engine.state.set_metrics`` (the keys of :py:meth:`SetMetricsTable.aggregate`) and, when
    ``output_dir`` is given, writes ``<filename>.json`` (summary, per-image rows, settings; NaN as
    null) and ``<filename>.csv`` (one row per image, then a ``mean`` row), each atomically.

    Args:
        output_dir: folder for the files; None keeps the table in the engine state only.
        compat: ``"default"`` or ``"dpersona"``.
        thresholds: Dice_soft thresholds.
        rater_names: names for the per-rater columns (default ``A1 .. AR``).
        unbiased: GED within-set means over distinct pairs only.
        output_transform: maps the engine output to ``(pred, label[, rater_mask])``.
        filename: base name of the two files.
        image_key: batch key whose ``meta["filename_or_obj"]`` names each image in the rows.
        print_table: print the summary as a table when the run completes.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        compat: str = "default",
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        rater_names: Sequence[str] | None = None,
        unbiased: bool = False,
        output_transform: Callable | None = None,
        filename: str = "set_metrics",
        image_key: str = "image",
        print_table: bool = True,
    ) -> None:
        self.output_dir = output_dir
        self.print_table = print_table
        self.table = SetMetricsTable(
            thresholds=thresholds, compat=compat, rater_names=rater_names, unbiased=unbiased
        )
        self.output_transform = output_transform or from_engine_with_rater_mask()
        self.filename = filename
        self.image_key = image_key
        self._names: list[str] = []
        self._indices: list[int] = []

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self, engine: Any) -> None:
        self.table.reset()
        self._names = []
        self._indices = []

    def _image_names(self, batch: Any, n_images: int) -> list[str]:
        items = batch if isinstance(batch, list) else []
        names = []
        for i in range(n_images):
            meta = getattr(items[i].get(self.image_key), "meta", {}) if i < len(items) else {}
            names.append(str(meta.get("filename_or_obj", len(self._names) + i)))
        return names

    def _update(self, engine: Any) -> None:
        output = self.output_transform(engine.state.output)
        y_pred, y = output[0], output[1]
        rater_mask = output[2] if len(output) > 2 else None
        if rater_mask is None:
            rater_mask = _rater_mask_from_batch(engine.state.batch)
        n_images = len(y_pred) if isinstance(y_pred, (list, tuple)) else int(y_pred.shape[0])
        indices = sample_indices_of(engine.state.output)
        self.table(y_pred, y, rater_mask=rater_mask, sample_index=indices)
        self._names += self._image_names(engine.state.batch, n_images)
        self._indices += indices if indices is not None else [-1] * n_images

    def _complete(self, engine: Any) -> None:
        summary = self.table.aggregate()  # under torchrun: every rank's images, in dataset order
        names = gather_in_order(self._names, self._indices)
        per_image = [{"image": name, **row} for name, row in zip(names, self.table.per_image())]
        engine.state.set_metrics = {"summary": summary, "per_image": per_image}
        if not is_main_process():
            return
        if self.output_dir is not None:
            self.save(self.output_dir, summary, per_image)
        if self.print_table:
            print(format_metric_table(summary, title=f"set-to-set metrics over {len(per_image)} images"), flush=True)

    def save(self, output_dir: str, summary: dict[str, float], per_image: list[dict[str, Any]]) -> None:
        """Write ``<filename>.json`` and ``<filename>.csv`` into ``output_dir``."""
        doc = {
            "compat": self.table.compat,
            "unbiased": self.table.unbiased,
            "thresholds": list(self.table.thresholds),
            "num_images": len(per_image),
            "summary": {k: _json_safe(v) for k, v in summary.items()},
            "per_image": [{k: _json_safe(v) for k, v in row.items()} for row in per_image],
        }
        columns = ["image", *summary.keys()]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(columns)
        for row in per_image:
            writer.writerow([row["image"], *(f"{row[k]:.6f}" for k in columns[1:])])
        writer.writerow(["mean", *(f"{summary[k]:.6f}" for k in columns[1:])])
        atomic_write_json(f"{output_dir}/{self.filename}.json", doc)
        atomic_write_text(f"{output_dir}/{self.filename}.csv", text.getvalue())


def format_metric_table(summary: dict[str, float], title: str = "") -> str:
    """A two-column text table of a metric summary; NaN (undefined, e.g. Dice_match with S < R) shows as N/A."""
    width = max(len(k) for k in summary) if summary else 6
    lines = [title] if title else []
    lines += [f"| {'metric'.ljust(width)} | value    |", f"|{'-' * (width + 2)}|----------|"]
    for key, value in summary.items():
        shown = "N/A" if value != value else f"{value:.4f}"
        lines.append(f"| {key.ljust(width)} | {shown.ljust(8)} |")
    return "\n".join(lines)
