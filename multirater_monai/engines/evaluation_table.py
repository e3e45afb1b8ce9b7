"""One metric table over several evaluation settings of the same network.

The papers' tables report one model under several settings: Stage I with #10/#30/#50 samples,
Stage II personalized outputs, ProSeg personalized vs prior mode. This runs one evaluator per
setting (each setting loads its checkpoint and sets attributes of the network, such as
``num_samples`` or ``output_mode``), reads the summary that ``SetMetricsSaver`` leaves in
``engine.state.set_metrics``, and writes a single CSV/JSON table with one row per setting.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from multirater_monai.data.atomic import atomic_write_json, atomic_write_text
from multirater_monai.utils.checkpoint import load_network_weights

__all__ = ["run_evaluation_table", "format_settings_table"]


def _apply_setting(network: torch.nn.Module, setting: Mapping[str, Any], device) -> None:
    checkpoint = setting.get("checkpoint")
    if checkpoint:
        load_network_weights(network, checkpoint, map_location=device)
    for method, kwargs in (setting.get("calls") or {}).items():
        if not callable(getattr(network, method, None)):
            raise AttributeError(f"setting '{setting['name']}': the network has no method '{method}'")
        getattr(network, method)(**(kwargs or {}))
    for name, value in (setting.get("attributes") or {}).items():
        if not hasattr(network, name):
            raise AttributeError(f"setting '{setting['name']}': the network has no attribute '{name}'")
        setattr(network, name, value)


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
    evaluator, settings: Sequence[Mapping[str, Any]], output_dir: str | None = None, filename: str = "metrics"
) -> list[dict[str, Any]]:
    """Run ``evaluator`` once per setting and return (and save, print) the table of summaries.

    Args:
        evaluator: a MONAI evaluator with a ``SetMetricsSaver`` attached (it fills ``state.set_metrics``).
        settings: ``[{"name": "Stage I #10", "checkpoint": path or None, "calls": {"set_sampling":
            {"num_samples": 10}}, "attributes": {"output_mode": "samples"}}, ...]``: after loading the
            checkpoint, each ``calls`` method of the network is called with its keyword arguments, then
            each attribute is set.
        output_dir: where ``<filename>.csv`` and ``<filename>.json`` go (None: not saved).
    """
    if not settings:
        raise ValueError("no evaluation settings given; list at least one {'name', 'checkpoint', 'attributes'}")
    network = evaluator.network
    rows: list[dict[str, Any]] = []
    for setting in settings:
        _apply_setting(network, setting, evaluator.state.device if hasattr(evaluator.state, "device") else "cpu")
        evaluator.run()
        result = getattr(evaluator.state, "set_metrics", None)
        if result is None:
            raise RuntimeError("the evaluator has no SetMetricsSaver handler; add one to its val_handlers")
        rows.append({"setting": setting["name"], **result["summary"]})
    columns = [c for c in rows[0] if c != "setting"]
    print(format_settings_table(rows, columns), flush=True)
    if output_dir is not None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["setting", *columns])
        for row in rows:
            writer.writerow([row["setting"], *(row.get(c) for c in columns)])
        safe = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()} for row in rows]
        atomic_write_json(os.path.join(output_dir, f"{filename}.json"), {"settings": list(settings), "rows": safe})
        atomic_write_text(os.path.join(output_dir, f"{filename}.csv"), text.getvalue())
    return rows
