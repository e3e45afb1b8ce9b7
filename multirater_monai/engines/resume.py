"""Resume a killed training run where it stopped: the full training state, saved atomically every epoch.

A bundle's ``models/model.pt`` is only the best model; a run killed in epoch 80 of 100 (paper
configurations take hours) would start over. This handler, attached to a trainer (last in its
handler list, so that it runs after the epoch's validation), writes after every epoch one file,
``models/training_state.pt`` by default, holding:

* the network, the optimizer (and a learning-rate scheduler where the bundle has one);
* the trainer's epoch and iteration, and the training stage (two-stage bundles: D-Persona, AVAP);
* the best-model tracking of the validation (:class:`AtomicCheckpointSaver`'s list, the evaluator's
  best metric, an early stopper's counter), so that a resumed run replaces ``model.pt`` only with a better model;
* every random generator and the random transforms' states (:mod:`multirater_monai.utils.rng_state`),
  so that a resumed deterministic run ends with the weights of the uninterrupted one.

When the trainer starts and the file exists, the state is loaded (``weights_only=True``) and the run
goes on from the next epoch, saying so in one log line; a state of a later stage makes this stage's
trainer finish at once (the next stage starts from this stage's best model, as in an uninterrupted run).
``enabled=False`` (``--resume False``) starts afresh and says that the old state is replaced.
The file is written through a temporary file and a rename: a kill during the write keeps the previous one.

Under ``torchrun`` rank 0 alone writes the state (the weights are the same on every rank) and every rank
resumes from it, so the bundle folder must be one that every node reads (on one machine it always is).
The random generators saved are rank 0's: a resumed distributed run continues, but not bit for bit.
"""

from __future__ import annotations

import os

import torch
from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler

from ..utils.atomic import atomic_torch_save
from ..utils.distributed import is_main_process
from ..utils.rng_state import capture_rng_state, restore_rng_state

__all__ = ["ResumeCheckpoint", "load_training_state"]


def load_training_state(path: str, map_location=None) -> dict:
    """Read a state written by :class:`ResumeCheckpoint`; the error names the file and the fix."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects weights_only refuses
        raise RuntimeError(
            f"cannot read the training state {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "fix: delete it, or run training with --resume False to start afresh"
        ) from e
    if not isinstance(state, dict) or "trainer" not in state or "stage" not in state:
        raise RuntimeError(f"{path} is not a training state written by this project; fix: delete it, "
                           "or run training with --resume False")
    return state


def _say(message: str) -> None:
    if is_main_process():  # one line per run, not one per rank
        print(message, flush=True)


def _state_of(obj) -> dict:
    if isinstance(obj, EarlyStopHandler):  # MONAI's wrapper creates ignite's EarlyStopping when attached
        return {} if obj._handler is None else _plain(obj._handler.state_dict())
    return _plain(obj.state_dict())


def _load_state_of(obj, state: dict) -> None:
    if isinstance(obj, EarlyStopHandler):
        if obj._handler is not None and state:
            obj._handler.load_state_dict(state)
    elif state:
        obj.load_state_dict(state)


def _plain(value):
    """numpy scalars (a metric's value) as Python numbers: ``weights_only=True`` reads back only plain types."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value


class ResumeCheckpoint:
    """Save the training state after every epoch and resume from it when the trainer starts.

    Args:
        path: the state file (the bundles: ``@ckpt_dir + '/training_state.pt'``).
        stage: the training stage this trainer runs (1, or 2 for the second trainer of a two-stage bundle).
        enabled: False starts afresh (the state file is replaced at the end of the first epoch).
        validator: the evaluator whose best metric the run tracks (its ``best_metric`` is restored).
        extra_state: more objects whose state the run depends on, by name, each with ``state_dict`` /
            ``load_state_dict`` (the :class:`AtomicCheckpointSaver` keeping the best model, a learning-rate
            scheduler) or a MONAI ``EarlyStopHandler`` (its counter and best score).
    """

    def __init__(self, path: str, stage: int = 1, enabled: bool = True, validator: Engine | None = None,
                 extra_state: dict | None = None) -> None:
        self.path = str(path)
        self.stage = int(stage)
        self.enabled = bool(enabled)
        self.validator = validator
        self.extra_state = dict(extra_state or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def _dataset(self, engine):
        loader = getattr(engine, "data_loader", None)
        return getattr(loader, "dataset", None)

    def save(self, engine: Engine) -> None:
        if not is_main_process():
            return
        state = {
            "stage": self.stage,
            "trainer": {"epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration),
                        "max_epochs": int(engine.state.max_epochs),
                        # stopped early (ProSeg's early stopping): a re-run has nothing left to train
                        "terminated": bool(engine.should_terminate)},
            "network": engine.network.state_dict(),
            "optimizer": engine.optimizer.state_dict(),
            "rng": capture_rng_state(self._dataset(engine)),
        }
        state["extra"] = {name: _state_of(obj) for name, obj in self.extra_state.items()}
        if self.validator is not None:
            best = self.validator.state.best_metric
            state["validator"] = {"best_metric": float(best), "best_metric_epoch": int(self.validator.state.best_metric_epoch)}
        atomic_torch_save(state, self.path)

    def resume(self, engine: Engine) -> None:
        if not os.path.isfile(self.path):
            return
        if not self.enabled:
            if self.stage == 1 and is_main_process():
                print(f"[resume] --resume False: starting afresh; {self.path} and the best model will be replaced", flush=True)
            return
        state = load_training_state(self.path, map_location=getattr(engine.state, "device", None))
        epoch_length = engine.state.epoch_length
        if state["stage"] < self.stage:
            return  # the state of an earlier stage: this stage starts now (from that stage's best model)
        if state["stage"] > self.stage:
            engine.state.epoch = engine.state.max_epochs  # finished before: nothing left to run in this stage
            engine.state.iteration = engine.state.max_epochs * epoch_length
            _say(f"[resume] stage {self.stage} finished before ({self.path} holds stage {state['stage']})")
            return
        trainer = state["trainer"]
        epoch = engine.state.max_epochs if trainer.get("terminated") else min(trainer["epoch"], engine.state.max_epochs)
        engine.network.load_state_dict(state["network"])
        engine.optimizer.load_state_dict(state["optimizer"])
        for name, obj in self.extra_state.items():
            if name in state.get("extra", {}):
                _load_state_of(obj, state["extra"][name])
        if self.validator is not None and "validator" in state:
            self.validator.state.best_metric = state["validator"]["best_metric"]
            self.validator.state.best_metric_epoch = state["validator"]["best_metric_epoch"]
        restore_rng_state(state["rng"], self._dataset(engine))
        engine.state.epoch = epoch
        engine.state.iteration = epoch * epoch_length
        if trainer.get("terminated"):
            _say(f"[resume] {self.path}: stage {self.stage} stopped early after epoch {trainer['epoch']}, nothing left "
                  "to train (--resume False starts afresh)")
            return
        _say(f"[resume] resuming from {self.path}: stage {self.stage}, epoch {epoch} of {engine.state.max_epochs} "
              "done (--resume False starts afresh)")
