"""One metric table over several evaluation settings of the same network.

The papers' tables report one model under several settings: Stage I with #10/#30/#50 samples,
Stage II personalized outputs, ProSeg personalized vs prior mode. This runs one evaluator per
setting (each setting loads its checkpoint and sets the network's output through the method
interface, :meth:`MultiRaterMethod.configure_output`), reads the summary that the metric saver
(``SetMetricsSaver`` or ``CalibratedPersonalizedSaver``) leaves in ``engine.state.set_metrics``,
and writes a single CSV/JSON table with one row per setting (the JSON also keeps the per-image
rows, for confidence intervals over test images).

Under ``torchrun`` (``multi_gpu_evaluate.json``) every rank evaluates a shard of the images, the metric
savers gather the whole table on every rank, and rank 0 alone prints and writes it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.utils import set_determinism

from ..networks.method import MultiRaterMethod
from ..utils.atomic import atomic_write_json, atomic_write_text
from ..utils.checkpoint import load_network_weights
from ..utils.distributed import is_main_process

__all__ = ["EvaluationTable", "run_evaluation_table", "format_settings_table"]


_SETTING_KEYS = {"name", "checkpoint", "output_mode", "num_samples", "sample_seed"}


def _apply_setting(network: torch.nn.Module, setting: Mapping[str, Any], device) -> None:
    unknown = set(setting) - _SETTING_KEYS
    if unknown:
        raise ValueError(f"setting '{setting.get('name')}': unknown keys {sorted(unknown)}; use {sorted(_SETTING_KEYS)}")
    if not isinstance(network, MultiRaterMethod):
        raise TypeError(f"evaluation settings need a MultiRaterMethod network, got {type(network).__name__}")
    checkpoint = setting.get("checkpoint")
    if checkpoint:
        load_network_weights(network, checkpoint, map_location=device)
    output = {k: setting[k] for k in ("output_mode", "num_samples", "sample_seed") if k in setting}
    network.configure_output(**output)


def format_settings_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table, one row per setting; NaN/None shows as N/A."""
    def cell(value):
        if value is None or (isinstance(value, float) and value != value):
            return "N/A"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| setting | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join([str(r["setting"])] + [cell(r.get(c)) for c in columns]) + " |" for r in rows]
    return "\n".join(lines)


def run_evaluation_table(
    evaluator, settings: Sequence[Mapping[str, Any]], output_dir: str | None = None, filename: str = "metrics",
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """Run ``evaluator`` once per setting and return (and save, print) the table of summaries.

    Args:
        evaluator: a MONAI evaluator with a ``SetMetricsSaver`` attached (it fills ``state.set_metrics``).
        settings: ``[{"name": "Stage I #10", "checkpoint": path or None, "output_mode": "samples",
            "num_samples": 10}, ...]``: after loading the checkpoint, the output mode and sampling are
            set (``configure_output``); absent keys leave the network's setting as it is.
        output_dir: where ``<filename>.csv`` and ``<filename>.json`` go (None: not saved).
        seed: every setting starts from ``set_determinism(seed)`` (None: from where the previous left the
            random state), so a row's samples do not depend on the rows before it, and the first images of a
            row are drawn the same in a run over the whole split and in a run over its first batches.
    """
    if not settings:
        raise ValueError("no evaluation settings given; list at least one {'name', 'checkpoint', 'output_mode'}")
    network = evaluator.network
    rows: list[dict[str, Any]] = []
    per_image: dict[str, list] = {}
    for setting in settings:
        if seed is not None:
            set_determinism(seed=int(seed))
        _apply_setting(network, setting, evaluator.state.device)
        evaluator.run()
        result = getattr(evaluator.state, "set_metrics", None)
        if result is None:
            raise RuntimeError("the evaluator has no SetMetricsSaver handler; add one to its val_handlers")
        rows.append({"setting": setting["name"], **result["summary"]})
        per_image[setting["name"]] = result.get("per_image", [])
    columns = [c for c in rows[0] if c != "setting"]
    if not is_main_process():
        return rows
    print(format_settings_table(rows, columns), flush=True)
    if output_dir is not None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["setting", *columns])
        for row in rows:
            writer.writerow([row["setting"], *(row.get(c) for c in columns)])
        def safe(row):
            return {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}

        doc = {"settings": list(settings), "rows": [safe(r) for r in rows],
               "per_image": {name: [safe(r) for r in items] for name, items in per_image.items()}}
        atomic_write_json(os.path.join(output_dir, f"{filename}.json"), doc)
        atomic_write_text(os.path.join(output_dir, f"{filename}.csv"), text.getvalue())
    return rows


class EvaluationTable:
    """The evaluation of a bundle as one component: ``run()`` is :func:`run_evaluation_table` with these arguments.

    In ``evaluate.json``::

        "evaluation": {"_target_": "multirater_monai.engines.EvaluationTable", "evaluator": "@validate#evaluator",
                       "settings": "@evaluation_settings", "output_dir": "@output_dir", "seed": "@seed"},
        "run": ["$@evaluation.run()"]
    """

    def __init__(self, evaluator, settings: Sequence[Mapping[str, Any]], output_dir: str | None = None,
                 filename: str = "metrics", seed: int | None = None) -> None:
        self.evaluator, self.settings, self.output_dir, self.filename = evaluator, settings, output_dir, filename
        self.seed = seed

    def run(self) -> list[dict[str, Any]]:
        return run_evaluation_table(self.evaluator, self.settings, self.output_dir, self.filename, self.seed)
