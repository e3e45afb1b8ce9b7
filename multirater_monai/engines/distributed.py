"""The process group of a ``torchrun`` training or evaluation, as components that ``multi_gpu_*.json`` wire in.

``torchrun --nproc_per_node=N`` starts N copies of ``python -m monai.bundle run ...`` with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous address in their environment. The bundles'
``multi_gpu_train.json`` / ``multi_gpu_evaluate.json`` then use:

* :func:`distributed_device` as ``device``: ``cuda:<LOCAL_RANK>`` where CUDA is available, else the CPU;
* :func:`init_distributed` in ``initialize``: the process group, ``nccl`` on CUDA, ``gloo`` on the CPU;
* :func:`ensure_dataset_in_turn` as ``datalist``: a data set not yet prepared is prepared by one process,
  not by all of them at once into the same folder;
* :func:`rank_zero_handlers` around the handler lists: the handlers that only write or log
  (TensorBoard, stats, progress bars, checkpoint savers) run on rank 0 alone, the rest (validation,
  early stopping, metric tables, which gather from every rank) everywhere;
* :func:`destroy_distributed` in ``finalize``.

Weights are the same on every rank (DistributedDataParallel synchronises the gradients; see
:class:`~multirater_monai.engines.MultiRaterTrainer`'s ``distributed``), so rank 0's files are the run's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.handlers import CheckpointSaver, StatsHandler
from monai.handlers.tensorboard_handlers import TensorBoardHandler

from ..utils.distributed import get_rank, get_world_size, is_distributed, is_main_process

__all__ = [
    "distributed_device",
    "init_distributed",
    "destroy_distributed",
    "rank_zero_handlers",
    "broadcast_network",
    "backend_for",
    "barrier",
    "ensure_dataset_in_turn",
]

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _writer_types() -> tuple[type, ...]:
    types: list[type] = [StatsHandler, TensorBoardHandler, CheckpointSaver]
    try:  # ignite's progress bar (optional: it needs tqdm)
        from ignite.handlers import ProgressBar

        types.append(ProgressBar)
    except ImportError:
        pass
    return tuple(types)


def distributed_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` where CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(device: torch.device | str | None = None) -> bool:
    """Join the process group that ``torchrun`` set up (once; later calls do nothing); returns True.

    The backend follows the device (:func:`backend_for`); on CUDA the device becomes the current one,
    so that collectives and ``torch.cuda`` calls use this process's GPU.
    """
    if dist.is_initialized():
        return True
    missing = [v for v in _TORCHRUN_VARIABLES if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"multi_gpu_*.json runs one process per device under torchrun, but {', '.join(missing)} "
            "is not set; fix: start it as torchrun --nnodes=1 --nproc_per_node=N -m monai.bundle run ... "
            "--config_file \"['configs/train.json','configs/multi_gpu_train.json']\", or drop multi_gpu_train.json "
            "to train in one process"
        )
    device = torch.device(device) if device is not None else distributed_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend_for(device))
    print(f"[rank {get_rank()}/{get_world_size()}] process group: {dist.get_backend()} on {device}", flush=True)
    return True


def destroy_distributed() -> None:
    """Leave the process group (the bundles' ``finalize``); nothing outside one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing outside a process group); on ``nccl`` on this process's GPU."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    on_gpu = dist.get_backend() == "nccl"
    dist.barrier(device_ids=[torch.cuda.current_device()] if on_gpu else None)


def ensure_dataset_in_turn(name: str, dataset_dir: str, **options: Any) -> str:
    """:func:`multirater_monai.data.ensure_dataset` one process at a time where the data set is still to be prepared.

    Rank 0 goes first; then the first process of every other node (whose folder may not be shared with
    node 0); then the rest, who find the data set ready. Without a process group: ``ensure_dataset``.
    """
    from ..data import ensure_dataset

    if not (dist.is_available() and dist.is_initialized()):
        return ensure_dataset(name, dataset_dir, **options)
    first_on_node = int(os.environ.get("LOCAL_RANK", 0)) == 0
    turns = (get_rank() == 0, first_on_node and get_rank() != 0, not first_on_node)
    datalist = ""
    for my_turn in turns:
        if my_turn:
            datalist = ensure_dataset(name, dataset_dir, **options)
        barrier()
    return datalist


def rank_zero_handlers(handlers: Sequence[Any] | None) -> list[Any]:
    """``handlers`` on rank 0; on other ranks without those that only write or log.

    Dropped there: MONAI's ``StatsHandler`` (and :class:`LossTermsStatsHandler`), TensorBoard handlers,
    ``CheckpointSaver`` (and :class:`AtomicCheckpointSaver`), ignite's ``ProgressBar``. Kept everywhere:
    everything else, notably the validation handler, early stopping, :class:`ResumeCheckpoint` (it loads on
    every rank and saves on rank 0) and the metric savers (they gather every rank's images; only rank 0 writes).
    ``None`` entries (handlers a config disabled with ``"_disabled_"``) are dropped on every rank. A TensorBoard
    handler opens its event file when it is built, so the configs also disable building it on other ranks.
    """
    handlers = [h for h in handlers or [] if h is not None]  # None: a handler the config disabled on this rank
    if is_main_process():
        return handlers
    writers = _writer_types()
    return [h for h in handlers if not isinstance(h, writers)]


def broadcast_network(network: torch.nn.Module, src: int = 0) -> torch.nn.Module:
    """Copy rank ``src``'s parameters and buffers into every rank's ``network`` (in place); returns it."""
    if is_distributed():
        with torch.no_grad():
            for tensor in network.state_dict().values():
                dist.broadcast(tensor, src=src)
    return network
