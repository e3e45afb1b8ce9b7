"""Pictures: overlays of raters and outputs on the image."""

from .overlay import RATER_COLOURS, save_overlay_png
from .transforms import SaveOverlayPNGd

__all__ = ["RATER_COLOURS", "save_overlay_png", "SaveOverlayPNGd"]
