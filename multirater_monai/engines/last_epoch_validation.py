"""MONAI's ``ValidationHandler`` that also validates after the last epoch, so training always leaves a model.

The bundles keep only the best model, saved when a validation finds a better one. With MONAI's
handler a run whose epochs are not a multiple of ``val_interval`` (``--epochs 1`` with the default
interval 2) never validated its last epochs, or never validated at all, and wrote no model. This
handler adds one validation when the trainer completes, if the last epoch was not validated.
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

__all__ = ["LastEpochValidationHandler"]


class LastEpochValidationHandler(ValidationHandler):
    """:class:`monai.handlers.ValidationHandler` (same arguments) plus a validation of the final epoch."""

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        self._trained = False
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._mark_trained)
        engine.add_event_handler(Events.COMPLETED, self._validate_last_epoch)

    def _reset(self, engine: Engine) -> None:
        self._trained = False

    def _mark_trained(self, engine: Engine) -> None:
        self._trained = True

    def _validate_last_epoch(self, engine: Engine) -> None:
        if self.validator is None:
            raise RuntimeError("please set validator in __init__() or call `set_validator()` before training.")
        # MONAI's evaluator leaves its epoch at the trainer epoch it validated last
        # only after epochs trained in this run: a stage that a resumed run skips (finished before) must
        # not validate, and so overwrite the stage's best model with, the untrained network
        if self._trained and self.validator.state.epoch != engine.state.epoch:
            self.validator.run(engine.state.epoch)
