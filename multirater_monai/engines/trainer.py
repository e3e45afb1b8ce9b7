"""Trainer for methods with a multi-rater training objective.

MONAI's ``SupervisedTrainer`` computes ``loss_function(network(image), label)``. The multi-rater
methods need the whole batch (image, rater stack, rater mask) and return several named loss terms
(:meth:`MultiRaterMethod.training_objective` ``-> {"loss": ..., "kl": ..., ...}``, see
docs/DESIGN.md section 3). This trainer calls that objective, back-propagates ``"loss"``, steps the
optimizer and puts every term into ``engine.state.output`` as a detached float, so
:class:`~multirater_monai.engines.LossTermsStatsHandler` logs them all. The output also holds ``image`` and ``label``; there is no ``pred``
(the objective may decode posterior samples, not the inference output), so no ``postprocessing`` or
train metric should read it.
"""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from ..networks.method import MultiRaterMethod
from ..utils.distributed import get_rank, get_world_size
from .data_parallel import objective_ddp

__all__ = ["MultiRaterTrainer"]


class MultiRaterTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration runs ``network.training_objective``.

    Args:
        rater_mask_key: key of the (B, R) bool mask in the batch; absent -> every rater present.
        loss_function: unused (the network's objective is the loss); defaults to None.
        distributed: train with DistributedDataParallel in the process group that ``torchrun`` started
            (:func:`~multirater_monai.engines.init_distributed`); the data loader should hold a ``DistributedSampler``.
        ddp_kwargs: more arguments of ``DistributedDataParallel`` (e.g. ``{"find_unused_parameters": true}``).
        All other arguments are those of :class:`monai.engines.SupervisedTrainer`. ``optimizer`` should
        hold ``network.parameters_to_train(stage)``.
    """

    def __init__(self, *args, loss_function=None, rater_mask_key: str = "rater_mask", distributed: bool = False,
                 ddp_kwargs: dict | None = None, **kwargs) -> None:
        super().__init__(*args, loss_function=loss_function, **kwargs)
        if not isinstance(self.network, MultiRaterMethod):
            raise TypeError(
                f"MultiRaterTrainer trains a MultiRaterMethod (multirater_monai.networks); got "
                f"{type(self.network).__name__}. Wrap the network in a method class, or use MONAI's SupervisedTrainer "
                "with a loss_function."
            )
        self.rater_mask_key = rater_mask_key
        self.distributed = bool(distributed)
        self.ddp_kwargs = dict(ddp_kwargs or {})
        self._objective = None
        self._samples_seen = 0
        if self.distributed:
            self.add_event_handler(Events.STARTED, self._start_distributed)
            self.add_event_handler(Events.COMPLETED, self._log_rank)

    def _start_distributed(self, engine: SupervisedTrainer) -> None:
        if not torch.distributed.is_initialized():
            raise RuntimeError(
                "MultiRaterTrainer(distributed=True) needs a process group; fix: start the run with torchrun "
                "--nproc_per_node=N and multi_gpu_train.json, whose initialize calls multirater_monai.engines.init_distributed"
            )
        # built here, after a resumed state was loaded and, in a later stage, after begin_stage froze the
        # earlier stage's parts: DDP fixes the parameters it synchronises when it is built
        self._objective = objective_ddp(self.network, engine.state.device, **self.ddp_kwargs)
        self._samples_seen = 0

    def _share_buffers(self, engine: SupervisedTrainer) -> None:
        # DDP broadcasts rank 0's buffers before each forward; after the epoch's last step they differ again.
        # Called from the epoch's last iteration, so it precedes every EPOCH_COMPLETED handler (the validation)
        with torch.no_grad():
            for buffer in self.network.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def _log_rank(self, engine: SupervisedTrainer) -> None:
        print(f"[rank {get_rank()}/{get_world_size()}] stage {self.network.stage}: trained {self._samples_seen} samples in "
              f"{engine.state.iteration} iterations up to epoch {engine.state.epoch} on {engine.state.device}", flush=True)

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        mask = batchdata.get(self.rater_mask_key) if isinstance(batchdata, dict) else None
        if mask is not None:
            mask = torch.as_tensor(mask).to(device=targets.device, dtype=torch.bool)
        network = engine.network
        objective = self._objective if self._objective is not None else network.training_objective
        self._samples_seen += int(inputs.shape[0])
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                terms = objective(inputs, targets, mask)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            engine.scaler.scale(terms["loss"]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            terms = objective(inputs, targets, mask)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            terms["loss"].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        for name, value in terms.items():
            engine.state.output[name] = float(value.detach())
        if self._objective is not None and engine.state.iteration % engine.state.epoch_length == 0:
            self._share_buffers(engine)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
