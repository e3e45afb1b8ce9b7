"""One evaluation table for a method with a calibrated map AND per-rater outputs (AVAP), per structure.

AVAP's tables report, per structure (RIGA: disc, cup), 'Mean Voting' (calibrated map vs the
raters' mean) and 'Average' (each rater's output vs that rater, soft Dice, mean over raters); the
project adds the set-to-set table (GED with its terms, Dice_soft, Dice_max, Dice_match, Dice_Ai,
Dice_mean) computed on the R per-rater outputs. This handler computes all of them from the
evaluator's decollated output and leaves the summary in ``engine.state.set_metrics``, where
:func:`multirater_monai.engines.run_evaluation_table` reads it.

Keys: with one structure ``mean_voting``, ``average``, each rater's soft Dice ``average_A1 .. average_AR``
(so that the rows of single-rater models can be compared rater by rater), then the set-table keys; with
several structures every key is prefixed by the structure's name (``core_mean_voting``, ``core_ged``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from multirater_monai.utils.distributed import gather_in_order, is_main_process
from multirater_monai.utils.errors import MultiRaterDataError

from .agreement_dice import AverageRaterDiceMetric, MeanVotingDiceMetric
from .cumulative import SetMetricsTable
from .handlers import format_metric_table, sample_indices_of
from .set_metrics import DEFAULT_THRESHOLDS

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["CalibratedPersonalizedSaver"]


def _items(output: Any, key: str) -> list[torch.Tensor]:
    if isinstance(output, dict):
        return list(output[key])
    if isinstance(output, list) and output and isinstance(output[0], dict):
        if key not in output[0]:
            raise KeyError(
                f"the evaluator output has no '{key}'; add the post-processing that writes it "
                "(multirater_monai.transforms.MethodOutputsd)."
            )
        return [item[key] for item in output]
    raise ValueError(f"cannot read '{key}' from an engine output of type {type(output).__name__}.")


class CalibratedPersonalizedSaver:
    """Per structure: 'Mean Voting', 'Average' and the set-metric table of the per-rater outputs.

    Args:
        num_raters: R.
        structure_names: K names (default ``["s1", ...]`` inferred from the calibrated map's channels);
            with one structure no prefix is used.
        rater_names: names of the per-rater Dice columns (default ``A1 .. AR``).
        thresholds: soft-Dice thresholds (paper: 0.1, 0.3, 0.5, 0.7, 0.9).
        calibrated_key / personalized_key / label_key / rater_mask_key: keys of the decollated output:
            (K, *sp) calibrated maps, (K * R, *sp) per-rater probabilities, (K * R, *sp) rater stack,
            (K * R,) bool mask (structure-major).
        print_table: print the summary when the run completes.
    """

    def __init__(
        self,
        num_raters: int,
        structure_names: Sequence[str] | None = None,
        rater_names: Sequence[str] | None = None,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        calibrated_key: str = "calibrated",
        personalized_key: str = "personalized",
        label_key: str = "label",
        rater_mask_key: str = "rater_mask",
        print_table: bool = True,
    ) -> None:
        self.num_raters = int(num_raters)
        self.structure_names = None if structure_names is None else [str(s) for s in structure_names]
        self.rater_names = rater_names
        self.thresholds = tuple(thresholds)
        self.keys = (calibrated_key, personalized_key, label_key, rater_mask_key)
        self.print_table = print_table
        self._parts: list[tuple[MeanVotingDiceMetric, AverageRaterDiceMetric, SetMetricsTable]] = []
        self._names: list[str] = []
        self._indices: list[int] = []

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self, engine: Any = None) -> None:
        self._parts = []
        self._names = []
        self._indices = []

    def _new_parts(self, num_structures: int) -> None:
        if self.structure_names is not None and len(self.structure_names) != num_structures:
            raise MultiRaterDataError(
                f"{len(self.structure_names)} structure names given but the calibrated map has {num_structures} "
                "channels; fix: name one structure per calibrated channel."
            )
        self._parts = [
            (MeanVotingDiceMetric(self.thresholds), AverageRaterDiceMetric(self.thresholds),
             SetMetricsTable(self.thresholds, rater_names=self.rater_names))
            for _ in range(num_structures)
        ]

    def update(self, calibrated: list, personalized: list, label: list, rater_mask: list | None,
               sample_index: list[int] | None = None) -> None:
        """Add a batch given as lists of channel-first tensors (one per image); ``sample_index``: their dataset
        indices (under ``torchrun`` the gathered rows are put into dataset order)."""
        num_structures = int(calibrated[0].shape[0])
        if not self._parts:
            self._new_parts(num_structures)
        r = self.num_raters
        expected = num_structures * r
        for name, items in (("personalized", personalized), ("label", label)):
            if int(items[0].shape[0]) != expected:
                raise MultiRaterDataError(
                    f"'{name}' has {int(items[0].shape[0])} channels, expected K x R = {num_structures} x {r}; "
                    "fix: set num_raters to the network's and the datalist's."
                )
        masks = rater_mask if rater_mask is not None else [torch.ones(expected, dtype=torch.bool)] * len(label)
        masks = [torch.as_tensor(m, dtype=torch.bool).reshape(-1) for m in masks]
        for k, (mean_voting, average, table) in enumerate(self._parts):
            part = slice(k * r, (k + 1) * r)
            labels = [t[part] for t in label]
            part_masks = [m[part] for m in masks]
            mean_voting([c[k:k + 1] for c in calibrated], labels, rater_mask=part_masks, sample_index=sample_index)
            outputs = [p[part] for p in personalized]
            average(outputs, labels, rater_mask=part_masks, sample_index=sample_index)
            table(outputs, labels, rater_mask=part_masks, sample_index=sample_index)

    def _update(self, engine: Any) -> None:
        output = engine.state.output
        cal_key, per_key, lab_key, mask_key = self.keys
        first = output[0] if isinstance(output, list) and output else output
        masks = _items(output, mask_key) if isinstance(first, dict) and mask_key in first else None
        calibrated = _items(output, cal_key)
        indices = sample_indices_of(output)
        self.update(calibrated, _items(output, per_key), _items(output, lab_key), masks, sample_index=indices)
        # each row names its image (the source file), so tables of several methods pair up image by image
        for item in calibrated:
            meta = getattr(item, "meta", {}) or {}
            self._names.append(str(meta.get("filename_or_obj", len(self._names))))
        self._indices += indices if indices is not None else [-1] * len(calibrated)

    def _rater_names(self) -> list[str]:
        return list(self.rater_names) if self.rater_names is not None else [f"A{i + 1}" for i in range(self.num_raters)]

    def _prefix(self, k: int) -> str:
        if len(self._parts) == 1:
            return ""
        names = self.structure_names or [f"s{i + 1}" for i in range(len(self._parts))]
        return f"{names[k]}_"

    def summary(self) -> dict[str, float]:
        """The flat summary over the images seen since the last reset."""
        if not self._parts:
            raise ValueError("CalibratedPersonalizedSaver has seen no images.")
        out: dict[str, float] = {}
        for k, (mean_voting, average, table) in enumerate(self._parts):
            prefix = self._prefix(k)
            out[f"{prefix}mean_voting"] = float(mean_voting.aggregate())
            out[f"{prefix}average"] = float(average.aggregate())
            per_rater = torch.nanmean(average.get_buffer(), dim=0).tolist()
            out.update({f"{prefix}average_{name}": value for name, value in zip(self._rater_names(), per_rater)})
            out.update({f"{prefix}{key}": value for key, value in table.aggregate().items()})
        return out

    def per_image(self) -> list[dict[str, float]]:
        names = gather_in_order(self._names, self._indices)  # under torchrun: every rank's, in dataset order
        rows: list[dict[str, float]] = []
        for k, (mean_voting, average, table) in enumerate(self._parts):
            prefix = self._prefix(k)
            voting = mean_voting.get_buffer()[:, 0].tolist()
            buffer = average.get_buffer()
            per_rater = torch.nanmean(buffer, dim=1).tolist()
            for i, row in enumerate(table.per_image()):
                if k == 0:
                    rows.append({"image": names[i]} if i < len(names) else {})
                rows[i].update({f"{prefix}mean_voting": voting[i], f"{prefix}average": per_rater[i]})
                rows[i].update({f"{prefix}average_{n}": float(v) for n, v in zip(self._rater_names(), buffer[i])})
                rows[i].update({f"{prefix}{key}": value for key, value in row.items()})
        return rows

    def _complete(self, engine: Any) -> None:
        summary = self.summary()
        engine.state.set_metrics = {"summary": summary, "per_image": self.per_image()}
        if self.print_table and is_main_process():
            print(format_metric_table(summary, title=f"calibrated + per-rater metrics over {len(engine.state.set_metrics['per_image'])} images"), flush=True)
