"""Where this process stands in a distributed (``torchrun``) run, and gathering per-image results in dataset order.

A run started by ``torchrun`` has one process per GPU (or per CPU share); each evaluates only its shard of
the validation/test images (``DistributedSampler``). A metric table must nevertheless be the table of
the whole data set, row for row the table a single process writes: :func:`gather_rows` collects every
rank's per-image rows and puts them back into dataset order, each image once. The sampler's
order is not the data set's (rank r holds images r, r + W, r + 2W, ...), and a padding sampler
(``even_divisible=True``, torch's default) repeats the first images on the last ranks; the dataset
index of every row, which the evaluator records, undoes both.

Outside a process group (a plain ``python -m monai.bundle run``) every function here is the
single-process identity: rank 0 of 1, nothing gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "get_rank", "get_world_size", "is_main_process", "gather_rows", "gather_in_order"]

UNKNOWN_INDEX = -1


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, the process that writes (checkpoints, tables, logs); True when not distributed."""
    return get_rank() == 0


def _all_gather(payload: Any) -> list[Any]:
    # The payloads are this job's own per-image values and names, pickled by torch between its own
    # processes (never read from a file); all_gather_object also copes with ranks that hold no image.
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, payload)
    return gathered


def _dataset_order(indices: list[int]) -> list[int] | None:
    """Positions that put gathered rows into dataset order, the first copy of each image only; None if unknown."""
    if any(int(i) < 0 for i in indices):
        return None
    first: dict[int, int] = {}
    for position, index in enumerate(indices):
        first.setdefault(int(index), position)
    return [first[i] for i in sorted(first)]


def gather_rows(rows: Sequence[torch.Tensor] | None, indices: Sequence[int]) -> tuple[list[torch.Tensor] | None, list[int]]:
    """Every rank's per-image rows, in dataset order, each image once.

    Args:
        rows: this rank's buffers, each ``(n, ...)`` with one row per image it evaluated (None: no image).
        indices: the ``n`` dataset indices of those images; :data:`UNKNOWN_INDEX` (-1) where unknown,
            in which case the rows are concatenated in rank order, as MONAI's ``Cumulative`` does.

    Returns:
        ``(buffers, indices)``: the gathered buffers (on this rank's device) and their dataset indices.
        Outside a process group, the inputs as they are.
    """
    local = None if rows is None else list(rows)
    if not is_distributed():
        return local, list(indices)
    device = local[0].device if local else torch.device("cpu")
    gathered = _all_gather((None if local is None else [r.detach().cpu() for r in local], [int(i) for i in indices]))
    parts = [(buffers, idx) for buffers, idx in gathered if buffers is not None]
    if not parts:
        return None, []
    merged = [torch.cat([buffers[k] for buffers, _ in parts], dim=0) for k in range(len(parts[0][0]))]
    all_indices = [i for _, idx in parts for i in idx]
    order = _dataset_order(all_indices)
    if order is None:
        return [m.to(device) for m in merged], all_indices
    return [m[order].to(device) for m in merged], [all_indices[p] for p in order]


def gather_in_order(items: Sequence[Any], indices: Sequence[int]) -> list[Any]:
    """Every rank's ``items`` (one per image: names, rows of a table) in dataset order, each image once."""
    if not is_distributed():
        return list(items)
    gathered = _all_gather((list(items), [int(i) for i in indices]))
    all_items = [item for part, _ in gathered for item in part]
    all_indices = [i for _, idx in gathered for i in idx]
    order = _dataset_order(all_indices)
    return all_items if order is None else [all_items[p] for p in order]
