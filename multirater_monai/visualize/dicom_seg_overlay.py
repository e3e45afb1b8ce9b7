"""A DICOM-SEG drawn on its source series, as a viewer (OHIF, 3D Slicer) shows it: one picture per slice.

The CT slice in a soft-tissue window; each rater's segment as a contour in its own colour (overlapping
raters stay visible), map segments (``"agreement >= 0.5"``) filled, translucent. The segments are
found on the slice by their frames' ImagePositionPatient, as a viewer places them. For documentation
and a quick look without a viewer:

    python -m multirater_monai.visualize.dicom_seg_overlay SEG.dcm SERIES_FOLDER out.png
"""

from __future__ import annotations

import sys

import numpy as np

from .overlay import RATER_COLOURS, save_figure_atomically

__all__ = ["render_seg_overlay"]


def _position(item) -> tuple:
    return tuple(np.round(np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float), 2))


def render_seg_overlay(seg_path: str, series_dir: str, png_path: str, slice_index: int | None = None,
                       window: tuple[float, float] = (-160.0, 240.0)) -> str:
    """Write the PNG of slice ``slice_index`` (default: the slice the segments mark most) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pydicom
    from matplotlib.patches import Patch

    from ..dicom import read_series

    sources = read_series(series_dir)
    seg = pydicom.dcmread(seg_path)
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns)).astype(bool)
    by_slice: dict[tuple, dict[int, np.ndarray]] = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        by_slice.setdefault(_position(item), {})[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)] = frame
    positions = [tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 2)) for ds in sources]
    if slice_index is None:
        slice_index = int(np.argmax([sum(m.sum() for m in by_slice.get(p, {}).values()) for p in positions]))
    ds = sources[slice_index]
    hu = ds.pixel_array * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    segments = by_slice.get(positions[slice_index], {})

    fig, ax = plt.subplots(figsize=(5, 5 * hu.shape[0] / hu.shape[1] + 0.4))
    ax.imshow(hu, cmap="gray", vmin=window[0], vmax=window[1])
    handles = []
    for i, number in enumerate(sorted(labels)):
        colour = RATER_COLOURS[i % len(RATER_COLOURS)]
        mask = segments.get(number, np.zeros_like(hu, bool))
        if ">=" in labels[number]:  # a thresholded map: filled
            ax.imshow(np.ma.masked_where(~mask, mask), cmap=matplotlib.colors.ListedColormap([colour]), alpha=0.35)
        elif mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
        handles.append(Patch(facecolor=colour, alpha=0.35 if ">=" in labels[number] else 1.0, label=labels[number]))
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.7)
    algorithm = seg.SegmentSequence[0].get("SegmentAlgorithmName", "")
    ax.set_title(f"{algorithm} - slice {slice_index + 1} of {len(sources)}", fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    return save_figure_atomically(fig, png_path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        print("usage: python -m multirater_monai.visualize.dicom_seg_overlay SEG.dcm SERIES_FOLDER out.png [slice]")
        sys.exit(2)
    print(render_seg_overlay(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) == 5 else None))
