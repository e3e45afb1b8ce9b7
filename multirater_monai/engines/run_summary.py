"""The line a user reads at the end of an inference run: how many images, what was written, where."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["InferenceSummaryHandler"]


class InferenceSummaryHandler:
    """Print ``[inference] wrote N image(s): <outputs> in <output_dir>`` when the evaluator completes.

    Args:
        output_dir: where the outputs were written.
        outputs: what was written per image (e.g. ``["personalized", "samples", "agreement"]``).
        output_formats: the formats written (``nifti``: the outputs as NIfTI; ``dicom-seg``: one DICOM-SEG per series).
    """

    def __init__(self, output_dir: str, outputs: Sequence[str] = (), output_formats: Sequence[str] = ("nifti",)) -> None:
        self.output_dir = str(output_dir)
        self.outputs = [str(o) for o in outputs]
        self.output_formats = [str(f) for f in output_formats]

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        n_images = len(engine.data_loader.dataset)
        what = ", ".join(self.outputs) if self.outputs else "predictions"
        if "dicom-seg" in self.output_formats:
            what = f"{what}, DICOM-SEG" if "nifti" in self.output_formats else "DICOM-SEG"
        print(f"[inference] wrote {n_images} image(s): {what} in {self.output_dir}", flush=True)
