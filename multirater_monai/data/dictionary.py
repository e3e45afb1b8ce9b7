"""Dictionary twins of the rater-stack transforms in ``array.py`` (MONAI's ``...d`` pattern).

A loaded sample follows the project contract: ``image`` (C, H, W[, D]) float MetaTensor,
``label`` (R, H, W[, D]) float in {0, 1}, ``rater_mask`` (R,) bool.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import InvertibleTransform, MapTransform, Randomizable
from monai.utils import ensure_tuple_rep

from ..utils.errors import MultiRaterDataError
from .array import CheckFilesExist, CheckFinite, EnsureSpatialDims, FuseRaters, LoadRaterStack, RankRatersByArea, source_name

__all__ = [
    "CheckFilesExistd", "CheckFilesExistD", "CheckFilesExistDict",
    "CheckFinited", "CheckFiniteD", "CheckFiniteDict",
    "EnsureSpatialDimsd", "EnsureSpatialDimsD", "EnsureSpatialDimsDict",
    "LoadRaterStackd", "LoadRaterStackD", "LoadRaterStackDict",
    "RankRatersByAread", "RankRatersByAreaD", "RankRatersByAreaDict",
    "FuseRatersd", "FuseRatersD", "FuseRatersDict",
]


class CheckFilesExistd(MapTransform):
    """Dictionary twin of :class:`CheckFilesExist`: every path under ``keys`` must be a file."""

    def __init__(self, keys: KeysCollection = "image", what: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckFilesExist(what)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key])
        return d


class CheckFinited(MapTransform):
    """Dictionary twin of :class:`CheckFinite`: NaN/Inf in any of ``keys`` raises, naming the file."""

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckFinite()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key])
        return d


class EnsureSpatialDimsd(MapTransform, InvertibleTransform):
    """Dictionary twin of :class:`EnsureSpatialDims` (drop size-1 axes, e.g. QUBIQ's ``(H, W, 1)``); invertible."""

    def __init__(self, keys: KeysCollection, spatial_dims: int, volume_slices: bool = False,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureSpatialDims(spatial_dims, volume_slices)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter.inverse(d[key])
        return d


class LoadRaterStackd(MapTransform):
    """Dictionary twin of :class:`LoadRaterStack`.

    Replaces ``d[key]`` (a list of per-rater files, ``None`` for missing) by the ``(R, *spatial)``
    stack and writes ``d[rater_mask_key]`` (R,) bool. Load the image first: when ``d[image_key]``
    is an array its spatial shape is required of every rater file (and the image file is named
    in errors). ``num_raters``, ``spatial_dims``, ``reader``, ``threshold``: see ``LoadRaterStack``.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        rater_mask_key: str | Sequence[str] = "rater_mask",
        image_key: str | None = "image",
        num_raters: int | None = None,
        spatial_dims: int | None = None,
        reader=None,
        threshold: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.rater_mask_keys = ensure_tuple_rep(rater_mask_key, len(self.keys))
        self.image_key = image_key
        self.loader = LoadRaterStack(num_raters=num_raters, spatial_dims=spatial_dims, reader=reader, threshold=threshold)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d.get(self.image_key) if self.image_key is not None else None
        spatial_shape = tuple(image.shape[1:]) if hasattr(image, "shape") else None
        image_name = source_name(image, default=str(image)) if image is not None else None
        for key, mask_key in self.key_iterator(d, self.rater_mask_keys):
            files = d[key]
            d[mask_key] = self.loader.rater_mask_from(files)
            d[key] = self.loader(files, spatial_shape=spatial_shape, image_name=image_name)
        return d


class RankRatersByAread(MapTransform):
    """Dictionary twin of :class:`RankRatersByArea` (opt-in; smallest foreground first, missing raters last).

    ``d[rater_mask_key]`` is permuted with the raters; with ``order_key`` set the original index of
    each ranked rater is stored there, so rater identity stays traceable.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        rater_mask_key: str | None = "rater_mask",
        order_key: str | None = "rater_order",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.rater_mask_key = rater_mask_key
        self.order_key = order_key
        self.ranker = RankRatersByArea()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d.get(self.rater_mask_key) if self.rater_mask_key is not None else None
            d[key], ranked_mask, order = self.ranker(d[key], mask)
            if self.rater_mask_key is not None:
                d[self.rater_mask_key] = ranked_mask
            if self.order_key is not None:
                d[self.order_key] = torch.as_tensor(order, dtype=torch.long)
        return d


class FuseRatersd(Randomizable, MapTransform):
    """Dictionary twin of :class:`FuseRaters`: ``d[output_key]`` = fused ``(K, *spatial)`` label.

    ``output_key=None`` overwrites ``d[key]`` (``rater_mask`` is left as it was: it still describes
    the original raters). ``method``, ``rater_index``, ``staple_probabilities``: see ``FuseRaters``.
    With ``num_structures`` K > 1 the stack is ``(K * R, *spatial)`` structure-major (the project's
    multi-structure layout) and each structure's raters are fused on their own; ``"random"`` then
    draws one rater per sample for all structures. ``set_random_state`` seeds the ``"random"`` method.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        method: str = "majority",
        rater_mask_key: str | None = "rater_mask",
        output_key: str | Sequence[str] | None = None,
        rater_index: int | None = None,
        staple_probabilities: bool = False,
        num_structures: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.rater_mask_key = rater_mask_key
        self.output_keys = ensure_tuple_rep(output_key, len(self.keys))
        self.num_structures = int(num_structures)
        self.fuser = FuseRaters(method, rater_index=rater_index, staple_probabilities=staple_probabilities)

    def set_random_state(self, seed: int | None = None, state=None) -> "FuseRatersd":
        super().set_random_state(seed, state)
        self.fuser.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        pass  # the array transform draws per call, over that sample's present raters

    def _fuse(self, stack, mask):
        k = self.num_structures
        if k == 1:
            return self.fuser(stack, mask)
        if stack.shape[0] % k:
            raise MultiRaterDataError(
                f"the rater stack has {stack.shape[0]} channels, not a multiple of num_structures={k}; fix: set "
                "num_structures to the datalist's."
            )
        r = stack.shape[0] // k
        parts = [self.fuser(stack[i * r:(i + 1) * r], None if mask is None else mask[i * r:(i + 1) * r],
                            randomize=i == 0) for i in range(k)]
        return torch.cat(parts, dim=0)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        mask = d.get(self.rater_mask_key) if self.rater_mask_key is not None else None
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key if out_key is not None else key] = self._fuse(d[key], mask)
        return d


CheckFilesExistD = CheckFilesExistDict = CheckFilesExistd
CheckFiniteD = CheckFiniteDict = CheckFinited
EnsureSpatialDimsD = EnsureSpatialDimsDict = EnsureSpatialDimsd
LoadRaterStackD = LoadRaterStackDict = LoadRaterStackd
RankRatersByAreaD = RankRatersByAreaDict = RankRatersByAread
FuseRatersD = FuseRatersDict = FuseRatersd
