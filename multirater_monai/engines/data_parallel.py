"""DistributedDataParallel over a method's *training objective*, one wrapper per training stage.

DDP synchronises gradients only for computations that go through its own ``forward``. Our methods
train through :meth:`MultiRaterMethod.training_objective`, not ``forward`` (the inference output), so
DDP wraps :class:`TrainingObjective`, a module whose ``forward`` is the objective of the method it holds:
the parameters are the method's own (nothing is copied), and the evaluator keeps using the bare method.

Which parameters DDP synchronises is fixed when it is built, so :func:`objective_ddp` builds a wrapper
for the current stage only: parameters that the stage does not train are left out of the gradient sync.
Those are D-Persona's projection heads and AVAP's preference head in stage 1 (they take no part in the
stage-1 objective, and DDP would wait for their gradients forever), and the frozen backbone, prior and
decoder in stage 2 (``requires_grad=False``). Building the wrapper also copies rank 0's weights and
buffers to every rank.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..networks.method import MultiRaterMethod

__all__ = ["TrainingObjective", "objective_ddp"]


class TrainingObjective(nn.Module):
    """``forward(image, label, rater_mask)`` is ``method.training_objective(image, label, rater_mask)``."""

    def __init__(self, method: MultiRaterMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None) -> dict:
        return self.method.training_objective(image, label, rater_mask)


def objective_ddp(method: MultiRaterMethod, device: torch.device | str | None = None, **ddp_kwargs) -> DistributedDataParallel:
    """DDP over :class:`TrainingObjective` of ``method`` that synchronises the current stage's parameters only.

    Args:
        method: the network, already in its stage (:meth:`MultiRaterMethod.start_stage`).
        device: the process's device; on CUDA it is DDP's single ``device_ids`` entry.
        ddp_kwargs: more arguments of ``DistributedDataParallel`` (``find_unused_parameters``, ``bucket_cap_mb``...).
    """
    module = TrainingObjective(method)
    trained = {id(p) for p in method.parameters_to_train()}
    ignored = [f"method.{name}" for name, p in method.named_parameters() if id(p) not in trained]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
    device = torch.device(device) if device is not None else next(method.parameters()).device
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, **ddp_kwargs)
