"""Inference of a 2D network on 2D images and, slice by slice, on volumes (a CT series) with one inferer.

A 2D bundle's inference takes what its preprocessing gives: ``(B, C, H, W)`` images go through the
network as they are; ``(B, C, H, W, D)`` volumes go through MONAI's ``SliceInferer`` along the last
axis, each slice whole (``roi_size`` -1: the slice's own size, no tiling), and come back as
``(B, C', H, W, D)`` in the volume's grid, which ``Invertd`` then returns to the input's geometry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer, SliceInferer

__all__ = ["SliceWiseInferer"]


class SliceWiseInferer(Inferer):
    """Run ``network`` on ``spatial_dims``-D inputs directly and on inputs with one more axis slice by slice.

    Args:
        spatial_dims: the network's spatial dimensions (2).
        sw_batch_size: slices per network call.
    """

    def __init__(self, spatial_dims: int = 2, sw_batch_size: int = 8) -> None:
        super().__init__()
        self.spatial_dims = int(spatial_dims)
        self.slice_inferer = SliceInferer(spatial_dim=self.spatial_dims, roi_size=(-1,) * self.spatial_dims,
                                          sw_batch_size=int(sw_batch_size), progress=False)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if inputs.ndim == self.spatial_dims + 2:
            return network(inputs, *args, **kwargs)
        if inputs.ndim == self.spatial_dims + 3:
            return self.slice_inferer(inputs, network, *args, **kwargs)
        raise ValueError(f"SliceWiseInferer with spatial_dims={self.spatial_dims} takes (B, C, *{self.spatial_dims} "
                         f"axes) or one axis more; got shape {tuple(inputs.shape)}.")
