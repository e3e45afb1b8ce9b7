"""MONAI's ``CheckpointSaver`` whose files are never truncated: written aside, then renamed.

MONAI's saver writes in place (``DiskSaver(atomic=False)``, because ignite's atomic mode leaves the
file readable by its owner only), and for a fixed file name such as ``model.pt`` ignite first
*removes* the previous best and then writes the new one: a kill or a full disk in between leaves no
best model, or half of one. Here every file goes through
:func:`~multirater_monai.utils.atomic.atomic_torch_save` (temporary file in the same folder, fsync,
rename, ordinary permissions), and a fixed-name file is never removed before its replacement is
complete. As ignite's own ``DiskSaver``, it writes on rank 0 only under ``torchrun``. The options are MONAI's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from ..utils.atomic import atomic_torch_save
from ..utils.distributed import is_main_process

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver"]


class AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler writing ``dirname/(filename or the name ignite chooses)`` atomically."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        self.dirname = str(dirname)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if not is_main_process():
            return
        atomic_torch_save(checkpoint, os.path.join(self.dirname, self.filename or filename))

    def remove(self, filename: str) -> None:
        if self.filename is not None or not is_main_process():
            return  # a fixed name: the next save replaces the file in one rename, it must not vanish first
        path = os.path.join(self.dirname, filename)
        if os.path.isfile(path):
            os.remove(path)


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` with :class:`AtomicDiskSaver` for its final, best and interval files."""

    def __init__(self, save_dir: str, save_dict: dict, *args, final_filename: str | None = None,
                 key_metric_filename: str | None = None, **kwargs) -> None:
        super().__init__(save_dir, save_dict, *args, final_filename=final_filename,
                         key_metric_filename=key_metric_filename, **kwargs)
        fixed = {"_final_checkpoint": final_filename, "_key_metric_checkpoint": key_metric_filename,
                 "_interval_checkpoint": None}
        for attribute, filename in fixed.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename)

    def state_dict(self) -> dict:
        """The best-metric tracking list (priority, file name) as plain floats and strings (MONAI's saver has
        ``load_state_dict`` only); :class:`ResumeCheckpoint` saves it so a resumed run keeps the best model."""
        if self._key_metric_checkpoint is None:
            return {}
        return {key: [(float(p), str(f)) for p, f in items] for key, items in self._key_metric_checkpoint.state_dict().items()}
