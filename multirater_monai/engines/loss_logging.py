"""Logging every term of a method's training objective, as one handler.

:class:`MultiRaterTrainer` leaves ``{"loss": ..., <term>: ...}`` (floats) plus the batch's image and
label in ``engine.state.output``. This ``StatsHandler`` prints the loss terms every ``log_every``
iterations (and at each epoch's end, as MONAI's does), so a config needs no lambda to select them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.handlers import StatsHandler
from monai.utils import CommonKeys as Keys

__all__ = ["LossTermsStatsHandler", "loss_terms"]

_NOT_TERMS = (Keys.IMAGE, Keys.LABEL, Keys.PRED)


def loss_terms(output: Any, prefixes: Sequence[str] | None = None) -> dict[str, float]:
    """The float loss terms of a trainer output (a dict, or MONAI's decollated list of dicts)."""
    item = output[0] if isinstance(output, list) and output else output
    if not isinstance(item, dict):
        return {}
    terms = {k: v for k, v in item.items() if k not in _NOT_TERMS and isinstance(v, float)}
    if prefixes:
        terms = {k: v for k, v in terms.items() if k == "loss" or k.startswith(tuple(prefixes))}
    return terms


class LossTermsStatsHandler(StatsHandler):
    """``StatsHandler`` that logs the training objective's terms every ``log_every`` iterations.

    Args:
        tag_name: prefix of the logged values (e.g. ``"stage1_loss"``).
        log_every: iterations between two log lines (0: only at epoch ends).
        prefixes: log only ``loss`` and the terms starting with one of these (default: every term).
        All other arguments are those of ``monai.handlers.StatsHandler``.
    """

    def __init__(self, tag_name: str = "loss", log_every: int = 25, prefixes: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        self.log_every = int(log_every)
        self.prefixes = tuple(prefixes) if prefixes else None
        super().__init__(
            tag_name=tag_name,
            output_transform=self._terms,
            iteration_log=self._log_this_iteration if self.log_every > 0 else False,
            **kwargs,
        )

    def _terms(self, output: Any) -> dict[str, float]:
        return loss_terms(output, self.prefixes)

    def _log_this_iteration(self, engine: Any, iteration: int) -> bool:
        return iteration % self.log_every == 0
