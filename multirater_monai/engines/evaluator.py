"""Evaluator for multi-rater batches.

MONAI's ``SupervisedEvaluator`` puts only ``image``, ``label`` and ``pred`` into
``engine.state.output``. Set-to-set metrics also need to know which raters annotated each
sample (LIDC nodules have 1-4 readers), so this evaluator adds the batch's ``rater_mask``
to the output before MONAI decollates it; metric handlers read it with
``from_engine(["pred", "label", "rater_mask"])``.
"""

from __future__ import annotations

import torch
from monai.engines import SupervisedEvaluator
from monai.utils import CommonKeys as Keys

__all__ = ["MultiRaterEvaluator"]


class MultiRaterEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that also forwards the ``rater_mask`` of each batch.

    Args:
        rater_mask_key: key of the (B, R) bool mask in the batch; when the batch has none,
            every rater counts as present.
        All other arguments are those of :class:`monai.engines.SupervisedEvaluator`.
    """

    def __init__(self, *args, rater_mask_key: str = "rater_mask", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rater_mask_key = rater_mask_key

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict) -> dict | list:
        output = super()._iteration(engine, batchdata)
        mask = batchdata.get(self.rater_mask_key) if isinstance(batchdata, dict) else None
        # MONAI decollates the output right after the forward (MODEL_COMPLETED) when
        # ``decollate=True``: then the output is one dict per image.
        if isinstance(output, list):
            for i, item in enumerate(output):
                item[self.rater_mask_key] = self._mask_for(item[Keys.LABEL].shape[0], None if mask is None else mask[i])
        else:
            label = output[Keys.LABEL]
            output[self.rater_mask_key] = self._mask_for(label.shape[:2], mask).to(label.device)
        return output

    @staticmethod
    def _mask_for(shape, mask) -> torch.Tensor:
        if mask is None:
            return torch.ones(shape, dtype=torch.bool)
        return torch.as_tensor(mask, dtype=torch.bool)
