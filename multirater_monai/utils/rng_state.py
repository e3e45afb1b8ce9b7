"""Every random number generator a bundle's training draws from, as tensors and numbers.

A resumed run continues with exactly the random numbers the uninterrupted run would have drawn,
so that both end with the same weights: torch's generators (dropout, the methods' latent samples,
the data loader's shuffling and its worker seeds), numpy's and Python's global generators, and the
``RandomState`` of each random MONAI transform of the training data set (with ``num_workers=0``
MONAI seeds them once, when the data loader is made, and they advance from epoch to epoch).

The state holds only tensors, numbers, strings and lists, so it is saved in a checkpoint that
``torch.load(..., weights_only=True)`` reads: nothing is unpickled.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from monai.transforms import Randomizable

__all__ = ["capture_rng_state", "restore_rng_state", "random_transforms"]


def random_transforms(root) -> list[Randomizable]:
    """The random MONAI transforms reachable from ``root`` (a data set or transform), in a fixed order.

    Walks attributes, lists, tuples and dicts depth-first (the order of a config's Compose), skipping
    tensors and arrays (a cached data set holds thousands of them, and no transform).
    """
    found: list[Randomizable] = []
    seen: set[int] = set()

    def walk(obj) -> None:
        if id(obj) in seen or isinstance(obj, (torch.Tensor, np.ndarray, str, bytes, int, float, bool)) or obj is None:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            for key, item in vars(obj).items():
                if key in ("data", "_cache", "_hash_keys"):  # a data set's items: no transform there
                    continue
                walk(item)

    walk(root)
    return found


def _numpy_state(state: tuple) -> dict:
    kind, keys, pos, has_gauss, gauss = state
    return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_tuple(state: dict) -> tuple:
    return (state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"])


def capture_rng_state(transforms_root=None) -> dict:
    """The state of every generator (and of the random transforms under ``transforms_root``)."""
    version, words, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(np.random.get_state()),
        "python": {"version": int(version), "words": torch.tensor(words, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "transforms": [_numpy_state(t.R.get_state()) for t in random_transforms(transforms_root)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, transforms_root=None) -> None:
    """Put every generator back to ``state`` (from :func:`capture_rng_state` on the same configuration).

    Raises:
        ValueError: the data set has another number of random transforms than when the state was
            saved (the training configuration changed).
    """
    transforms = random_transforms(transforms_root)
    if len(transforms) != len(state["transforms"]):
        raise ValueError(
            f"the training data has {len(transforms)} random transforms, the saved state {len(state['transforms'])}: "
            "the configuration changed since the checkpoint was written"
        )
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_tuple(state["numpy"]))
    python = state["python"]
    random.setstate((python["version"], tuple(int(w) for w in python["words"].tolist()), python["gauss"]))
    for transform, saved in zip(transforms, state["transforms"]):
        transform.R.set_state(_numpy_tuple(saved))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
