"""Helpers shared by the bundles (checks, input listing)."""

from .bundle_helpers import list_input_images, require_checkpoint

__all__ = ["list_input_images", "require_checkpoint"]
