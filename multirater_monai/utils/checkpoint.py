"""Loading the bundles' checkpoints safely (``weights_only=True``: nothing is unpickled) and with clear errors.

Every way a checkpoint can be wrong stops with one message that names the file and the fix, before
anything is loaded or written: missing, unreadable (truncated, empty, not a torch file, holding a
pickled object), made for another network (another bundle, another rater count or backbone), or
holding NaN/Inf weights (a training run that diverged).
"""

from __future__ import annotations

import os

import torch

__all__ = ["load_network_weights", "read_checkpoint"]

_EXAMPLES = 3


def _unwrap(state):
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        return state["model"]  # a checkpoint saved with several objects
    return state


def read_checkpoint(path: str, network: torch.nn.Module | None = None, map_location=None, hint: str = "") -> dict:
    """The network state dict in ``path``, checked against ``network`` (when given) and for finite values.

    Args:
        hint: what to do when the file is missing (appended to the error).
    Raises:
        FileNotFoundError: no file at ``path``.
        RuntimeError: unreadable, another network's, or non-finite weights; the message names the fix.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}; {hint or 'fix: train the bundle first (run training)'}")
    try:
        state = _unwrap(torch.load(path, map_location=map_location or "cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - truncated, empty, not torch's format, or a pickled object
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RuntimeError(
            f"cannot read the checkpoint {path} ({type(e).__name__}: {first[:200]}); a checkpoint must be a file "
            "written by torch.save holding tensors only (objects are refused, never unpickled); "
            "fix: use the bundle's models/model.pt of a finished training run, or train again"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"the checkpoint {path} holds no network state dict (a dict of tensors); "
                           "fix: use the bundle's models/model.pt (models/training_state.pt is the resume state)")
    if network is not None:
        expected = network.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        resized = [f"{k}: checkpoint {tuple(state[k].shape)}, network {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or resized:
            parts = []
            for what, items in (("missing", missing), ("unexpected", unexpected), ("of another size", resized)):
                if items:
                    parts.append(f"{len(items)} {what} (e.g. {'; '.join(items[:_EXAMPLES])})")
            raise RuntimeError(
                f"the checkpoint {path} does not fit this configuration's {type(network).__name__}: "
                f"{', '.join(parts)} tensors; it was trained by another bundle or with other settings (num_raters, "
                "backbone); fix: pass the overrides it was trained with (e.g. --num_raters 7) or use this bundle's "
                "own checkpoint"
            )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise RuntimeError(
            f"the checkpoint {path} holds NaN or infinite weights in {len(bad)} tensor(s) (e.g. {bad[0]}): the training "
            "that wrote it diverged; fix: train again (e.g. with a lower --learning_rate) or use another checkpoint"
        )
    return state


def load_network_weights(network: torch.nn.Module, path: str, map_location=None, hint: str = "") -> torch.nn.Module:
    """Load a state dict saved by MONAI's ``CheckpointSaver`` (bare, or under ``"model"``) into ``network``.

    Args:
        hint: what to do when the file is missing (appended to the error).
    """
    network.load_state_dict(read_checkpoint(path, network, map_location=map_location, hint=hint))
    return network
