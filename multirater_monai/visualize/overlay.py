"""PNG overlays of rater masks and model outputs on the image, for people to look at.

One row of panels per image: the image with every rater's contour in its own colour, then each
group of model outputs (samples, personalized masks, or both in two panels) the same way, then the
agreement map of the last group (fraction of its outputs marking each pixel). Contours rather than
filled masks, so disagreement stays visible.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np

__all__ = ["RATER_COLOURS", "save_overlay_png", "save_figure_atomically"]

# distinguishable on a grey image; cycles when there are more masks than colours
RATER_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def save_figure_atomically(fig, path: str, dpi: int = 100) -> str:
    """Save a matplotlib figure as PNG through a temporary file and a rename (never a half-written picture),
    then close it; returns ``path``."""
    import matplotlib.pyplot as plt

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _contours(ax, masks: np.ndarray, names: Sequence[str], present: np.ndarray | None) -> None:
    from matplotlib.lines import Line2D

    handles = []
    for i, mask in enumerate(masks):
        if present is not None and not present[i]:
            continue
        colour = RATER_COLOURS[i % len(RATER_COLOURS)]
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.0)
        handles.append(Line2D([0], [0], color=colour, label=names[i]))
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=6, framealpha=0.6)


def save_overlay_png(
    path: str,
    image,
    raters=None,
    outputs=None,
    rater_mask=None,
    rater_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    title: str | None = None,
    threshold: float = 0.5,
) -> str:
    """Write a PNG with the image, the raters' contours, the outputs' contours and their agreement map.

    Args:
        path: PNG file to write (written atomically).
        image: (H, W) or (1, H, W) image, any intensity range (shown min-max scaled); (3, H, W) is shown in
            colour, (C, H, W) with other C > 1 by its first channel.
        raters: optional (R, H, W) binary rater stack.
        outputs: optional (S, H, W) probabilities or binary masks (thresholded at ``threshold``), or a
            dict ``{panel title: (S_k, H, W)}`` for several groups (e.g. personalized and samples),
            one panel each; the agreement map is that of the last group.
        rater_mask: optional (R,) bool; missing raters are not drawn.
        rater_names / output_names: legend labels (default A1.. / P1..); with several groups,
            ``output_names`` is a dict by panel title (a group without names gets P1..).
        title: figure title (e.g. the image file name).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = _as_numpy(image).astype(float)
    if img.ndim == 3 and img.shape[0] == 3:  # colour (fundus): shown in colour, min-max scaled
        img = img.transpose(1, 2, 0)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
    elif img.ndim == 3 and img.shape[0] > 1:  # several contrasts: the first
        img = img[0]
    else:
        img = img.reshape(img.shape[-2:])
    panels = [("image", None)]
    if raters is not None:
        panels.append(("raters", _as_numpy(raters) > 0.5))
    agreement = None
    if outputs is not None:
        groups = outputs if isinstance(outputs, dict) else {"outputs": outputs}
        names_by_group = output_names if isinstance(output_names, dict) else {"outputs": output_names}
        for kind, group in groups.items():
            binary = _as_numpy(group).astype(float) > threshold
            panels.append((kind, binary))
            agreement = binary.mean(axis=0)
    else:
        names_by_group = {}
    fig, axes = plt.subplots(1, len(panels) + (agreement is not None), figsize=(3 * (len(panels) + 1), 3.2))
    axes = np.atleast_1d(axes)
    present = None if rater_mask is None else _as_numpy(rater_mask).astype(bool)
    for ax, (kind, masks) in zip(axes, panels):
        ax.imshow(img, cmap="gray")
        ax.set_title(kind, fontsize=8)
        if kind == "raters":
            names = list(rater_names or [f"A{i + 1}" for i in range(len(masks))])
            _contours(ax, masks, names, present)
        elif kind != "image":
            names = list(names_by_group.get(kind) or [f"P{i + 1}" for i in range(len(masks))])
            _contours(ax, masks, names, None)
    if agreement is not None:
        shown = axes[-1].imshow(agreement, cmap="magma", vmin=0.0, vmax=1.0)
        axes[-1].set_title(f"agreement of {panels[-1][0]}", fontsize=8)
        fig.colorbar(shown, ax=axes[-1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_figure_atomically(fig, path, dpi=100)
