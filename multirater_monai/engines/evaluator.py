"""Evaluator for multi-rater batches.

MONAI's ``SupervisedEvaluator`` puts only ``image``, ``label`` and ``pred`` into
``engine.state.output``. Set-to-set metrics also need to know which raters annotated each
sample (LIDC nodules have 1-4 readers), so this evaluator adds the batch's ``rater_mask``
to the output before MONAI decollates it; metric handlers read it with
``from_engine(["pred", "label", "rater_mask"])``.

It also adds each image's dataset index (``sample_index``), read from the data loader's sampler: under
``torchrun`` every process evaluates a shard (``DistributedSampler``: rank r holds images r, r + W, ...,
padded with repeats), and the metrics use the indices to gather one table in dataset order, each image
once, equal to the single-process table.
"""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from monai.utils import CommonKeys as Keys
from torch.utils.data import DistributedSampler, SequentialSampler

__all__ = ["MultiRaterEvaluator"]


def _sampler_indices(data_loader) -> list[int] | None:
    """The dataset index of every image the loader yields this epoch, in order; None where not known.

    Only samplers whose order is fixed for the epoch qualify: iterating a ``DistributedSampler`` again
    repeats its epoch's order (seeded by seed + epoch), a ``SequentialSampler`` is ``range(N)``.
    """
    sampler = getattr(data_loader, "sampler", None)
    if isinstance(sampler, (DistributedSampler, SequentialSampler)):
        return [int(i) for i in sampler]
    return None


class MultiRaterEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that also forwards the ``rater_mask`` and the dataset index of each image.

    Args:
        rater_mask_key: key of the (B, R) bool mask in the batch; when the batch has none,
            every rater counts as present.
        sample_index_key: output key of each image's dataset index (absent when the sampler's order is unknown).
        All other arguments are those of :class:`monai.engines.SupervisedEvaluator`.
    """

    def __init__(self, *args, rater_mask_key: str = "rater_mask", sample_index_key: str = "sample_index", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rater_mask_key = rater_mask_key
        self.sample_index_key = sample_index_key
        self._epoch_indices: list[int] | None = None
        self._cursor = 0
        self.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)

    def _start_epoch(self, engine: SupervisedEvaluator) -> None:
        # after MONAI's own EPOCH_STARTED handler, which sets a DistributedSampler's epoch
        self._epoch_indices, self._cursor = _sampler_indices(engine.data_loader), 0

    def _next_indices(self, n_images: int) -> list[int] | None:
        if self._epoch_indices is None or self._cursor + n_images > len(self._epoch_indices):
            return None
        indices = self._epoch_indices[self._cursor:self._cursor + n_images]
        self._cursor += n_images
        return indices

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict) -> dict | list:
        output = super()._iteration(engine, batchdata)
        mask = batchdata.get(self.rater_mask_key) if isinstance(batchdata, dict) else None
        # MONAI decollates the output right after the forward (MODEL_COMPLETED) when
        # ``decollate=True``: then the output is one dict per image.
        if isinstance(output, list):
            indices = self._next_indices(len(output))
            for i, item in enumerate(output):
                item[self.rater_mask_key] = self._mask_for(item[Keys.LABEL].shape[0], None if mask is None else mask[i])
                if indices is not None:
                    item[self.sample_index_key] = indices[i]
        else:
            label = output[Keys.LABEL]
            output[self.rater_mask_key] = self._mask_for(label.shape[:2], mask).to(label.device)
            indices = self._next_indices(int(label.shape[0]))
            if indices is not None:
                output[self.sample_index_key] = torch.as_tensor(indices)
        return output

    @staticmethod
    def _mask_for(shape, mask) -> torch.Tensor:
        if mask is None:
            return torch.ones(shape, dtype=torch.bool)
        return torch.as_tensor(mask, dtype=torch.bool)
