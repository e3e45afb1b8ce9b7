"""Pictures: overlays of raters and outputs on the image."""

from .dicom_seg_overlay import render_seg_overlay
from .overlay import RATER_COLOURS, save_overlay_png
from .transforms import SaveOverlayPNGd

__all__ = ["RATER_COLOURS", "save_overlay_png", "SaveOverlayPNGd", "render_seg_overlay"]
