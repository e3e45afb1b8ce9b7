"""Helpers shared by the bundles (checks, input listing)."""

from .bundle_helpers import list_input_images, require_checkpoint
from .checkpoint import load_network_weights

__all__ = ["list_input_images", "require_checkpoint", "load_network_weights"]
