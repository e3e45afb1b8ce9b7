"""Loading the bundles' checkpoints safely (``weights_only=True``: nothing is unpickled)."""

from __future__ import annotations

import os

import torch

__all__ = ["load_network_weights"]


def load_network_weights(network: torch.nn.Module, path: str, map_location=None, hint: str = "") -> torch.nn.Module:
    """Load a state dict saved by MONAI's ``CheckpointSaver`` (bare, or under ``"model"``) into ``network``.

    Args:
        hint: what to do when the file is missing (appended to the error).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}; {hint or 'train the bundle first (run training)'}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a checkpoint saved with several objects
    network.load_state_dict(state)
    return network
