"""Cross-cutting helpers: errors, atomic writes, checkpoint loading, bundle helpers.

Nothing here imports the other subpackages at import time, so networks, losses, metrics and
engines can use errors and atomic writes without importing ``data``.
"""

from .atomic import atomic_output_dir, atomic_write_json, atomic_write_text
from .bundle_helpers import (
    default_bundle_root,
    default_cache_root,
    list_input_images,
    output_formats,
    output_names,
    rater_names,
    require_checkpoint,
    require_writable_dir,
)
from .checkpoint import load_network_weights
from .distributed import get_rank, get_world_size, is_distributed, is_main_process
from .errors import MultiRaterDataError, find_data_error

__all__ = [
    "MultiRaterDataError",
    "find_data_error",
    "atomic_output_dir",
    "atomic_write_json",
    "atomic_write_text",
    "default_bundle_root",
    "default_cache_root",
    "list_input_images",
    "output_formats",
    "output_names",
    "rater_names",
    "require_checkpoint",
    "require_writable_dir",
    "load_network_weights",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "is_main_process",
]
