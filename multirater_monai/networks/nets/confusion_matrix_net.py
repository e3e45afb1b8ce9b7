"""Confusion-matrix networks: CM-Global (Tanno et al., CVPR 2019) and CM-Pixel (Zhang et al., NeurIPS 2020).

Both papers separate what the image shows from how each rater errs. A segmentation network estimates
the distribution of the TRUE label ``p`` at every pixel; rater r is a confusion matrix ``CM_r``
(rows: true class i, columns: the class j the rater draws, every row a distribution), and rater r's
predicted label distribution is ``CM_r`` transposed applied to ``p``::

    p_r(y = j) = sum_i p(i) CM_r[i, j]

* ``mode="global"`` (CM-Global, Tanno et al., "Learning from noisy labels by regularized estimation
  of annotator confusion"): one learnable matrix per (structure, rater), the same at every pixel;
* ``mode="pixel"`` (CM-Pixel, Zhang et al., "Disentangling human error from the ground truth in
  segmentation of medical images"): a head on the backbone features emits a matrix per pixel, per
  (structure, rater).

Each structure is one binary task with C = 2 classes (background, foreground): the segmentation head
gives 2 logits per structure (softmax), and every matrix is 2 x 2. The matrices are row-wise softmaxes
of unconstrained logits, initialised with ``cm_init_diagonal`` on the diagonal (and 0 off it), so
training starts on the side of "every rater is mostly right". The pixel head's last convolution starts
at zero weight with that bias: at initialisation every pixel's matrix is that one matrix.

The start differs by mode (:data:`CM_INIT_DIAGONAL`). CM-Global: 4.0, rows (0.98, 0.02). CM-Pixel:
:data:`SOFTPLUS_IDENTITY_DIAGONAL` = 0.639, rows (0.654, 0.346), the start of the global matrices in the
code released with Zhang et al. (a learnable identity through a softplus, rows normalised: diagonal
softplus(1) / (softplus(1) + softplus(0))); their pixel head itself starts from a random initialisation,
rows about uniform. The start has to be on the diagonal side: the label permutation (p -> 1 - p with
anti-diagonal matrices) explains the raters equally well, and with per-pixel matrices the trace cannot
choose between the two (below). A near-identity start saturates the per-pixel matrices instead: the
softmax gradient of a 0.98 row is small, the pixels of the object keep "this rater is right" and p
absorbs the raters' misses. On the known-answer raters of ``tests/test_networks_cm.py`` (400 steps):
start 4.0, learned miss rates 0.03 / 0.17 / 0.33 for 0.6 / 0.7 / 0.7 and Dice of p 0.44; uniform rows
(0.0), Dice of p 0.14 (p partly on the permuted side); 0.639, the flip rates within 0.07, Dice 0.76.

Why the trace's sign matters little for CM-Pixel: where p is confident (0 or 1) only one row of a
pixel's matrix enters the raters' likelihood, so the cross entropy fixes that row and p, and the trace
could act only through the OTHER row, which the per-pixel head sets freely, without pressure on p.
CM-Global shares one matrix across pixels: the row unused on the object is the row used on the
background, and the trace acts on p. Measured on the same raters (400 steps), trace minimised /
maximised: Dice of p 0.76 / 0.76 at weight 0.01, 0.80 / 0.68 at 1.0; CM-Pixel's p is set by the start
and the cross entropy.
With a single sigmoid channel the matrices would be 1 x 1, always [1], and the model would reduce to
a plain network trained on every rater: hence the two classes.

Loss (:meth:`ConfusionMatrixNet.training_objective`): the cross entropy of each PRESENT rater's
predicted distribution against that rater's mask (mean over the present (sample, rater) pairs and
pixels), plus ``trace_weight`` times the mean trace of the matrices those pairs use, MINIMISED: among
the explanations that fit the data equally, it prefers the most confusing matrices, so that ``p``
becomes the clean label rather than a blend of the raters. Absent raters (``rater_mask`` False) take
no part in either term. In the binary case the cross entropy is a binary cross entropy on the logit
``log p_r(1) - log p_r(0)``, which is how it is computed (in log space, stable).

Inference ``forward(image)``, by ``output_mode``:

* ``"personalized"`` (default): ``K * R`` logits of ``p_r(foreground)``, structure-major;
* ``"true_label"``: ``K`` logits of ``p(foreground)``, the estimated true label;
* ``"personalized+true_label"``: both, personalized first (one backbone pass).

:meth:`split_outputs` gives ``personalized`` and/or ``consensus`` (= ``p``) probabilities, and
``calibrated``: ``p`` where the mode has it, else the mean of the raters' probabilities (as MH-UNet).
In ``"true_label"`` mode ``personalized`` is ``p`` for every rater (a rater-blind row, as FusionUNet).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from ...utils.errors import MultiRaterDataError
from ..blocks.backbone import BackboneConfig
from ..method import MultiRaterMethod
from ..rater_batch import check_multirater_batch

__all__ = [
    "ConfusionMatrixNet", "CM_MODES", "CM_OUTPUT_MODES", "CM_INIT_DIAGONAL", "SOFTPLUS_IDENTITY_DIAGONAL",
    "rater_log_probabilities",
]

CM_MODES = ("global", "pixel")
CM_OUTPUT_MODES = ("personalized", "true_label", "personalized+true_label")
NUM_CLASSES = 2  # one binary task per structure: background, foreground
# log(softplus(1) / softplus(0)): the softmax logit that gives the row (0.654, 0.346) of a softplus'd
# identity, normalised (the global matrices' start in the code released with Zhang et al., 2020)
SOFTPLUS_IDENTITY_DIAGONAL = math.log(math.log1p(math.e) / math.log(2.0))
CM_INIT_DIAGONAL = {"global": 4.0, "pixel": SOFTPLUS_IDENTITY_DIAGONAL}  # see the module docstring


def rater_log_probabilities(true_log_probs: torch.Tensor, cm_log_probs: torch.Tensor) -> torch.Tensor:
    """``log p_r(j) = logsumexp_i (log p(i) + log CM_r[i, j])``.

    ``true_log_probs`` ``(B, K, C, *sp)``; ``cm_log_probs`` ``(K, R, C, C)`` (global) or
    ``(B, K, R, C, C, *sp)`` (per pixel), rows = true class. Returns ``(B, K, R, C, *sp)``.
    """
    spatial = true_log_probs.dim() - 3
    log_p = true_log_probs.unsqueeze(2).unsqueeze(4)  # (B, K, 1, C_true, 1, *sp)
    if cm_log_probs.dim() == 4:
        cm = cm_log_probs.reshape(list(cm_log_probs.shape) + [1] * spatial).unsqueeze(0)
    else:
        cm = cm_log_probs
    return torch.logsumexp(log_p + cm, dim=3)


class ConfusionMatrixNet(MultiRaterMethod):
    """Segmentation network + per-rater confusion matrices (global or per pixel); see the module docstring.

    Args:
        backbone: feature network ``image -> (B, feature_channels, *sp)``.
        num_raters: R.
        feature_channels: channels of the backbone output.
        num_structures: K (each a binary task).
        spatial_dims: 2 or 3.
        mode: ``"global"`` (CM-Global) or ``"pixel"`` (CM-Pixel).
        trace_weight: weight of the mean trace of the confusion matrices, which is minimised
            (Tanno et al.: 0.01). Must be >= 0: a negative weight would maximise the trace.
        cm_init_diagonal: initial logit of the diagonal (0 off it); None: the mode's start,
            :data:`CM_INIT_DIAGONAL` (global 4.0, rows (0.98, 0.02); pixel 0.639, rows (0.654, 0.346)).
        cm_hidden_channels: ``"pixel"`` only: channels of the 3x3 convolution (+ ReLU) before the
            1x1 convolution that emits the matrices; 0: the 1x1 convolution reads the features.
        output_mode: one of :data:`CM_OUTPUT_MODES`.
    """

    output_modes = CM_OUTPUT_MODES

    def __init__(
        self,
        backbone: nn.Module,
        num_raters: int,
        feature_channels: int,
        num_structures: int = 1,
        spatial_dims: int = 2,
        mode: str = "global",
        trace_weight: float = 0.01,
        cm_init_diagonal: float | None = None,
        cm_hidden_channels: int = 16,
        output_mode: str = "personalized",
    ) -> None:
        super().__init__(num_raters, num_structures)
        if mode not in CM_MODES:
            raise ValueError(f"mode must be one of {CM_MODES}, got {mode!r}.")
        if float(trace_weight) < 0:
            raise ValueError(
                f"trace_weight must be >= 0 (the trace is minimised), got {trace_weight}; a negative weight "
                "maximises the trace and keeps the raters' noise in the estimated true label."
            )
        self.mode = mode
        self.num_classes = NUM_CLASSES
        self.trace_weight = float(trace_weight)
        self.backbone = backbone
        conv = Conv[Conv.CONV, spatial_dims]
        k, r, c = self.num_structures, self.num_raters, NUM_CLASSES
        self.segmentation_head = conv(feature_channels, k * c, kernel_size=1)
        initial = torch.full((c, c), 0.0)
        initial.fill_diagonal_(float(CM_INIT_DIAGONAL[mode] if cm_init_diagonal is None else cm_init_diagonal))
        if mode == "global":
            self.cm_logits = nn.Parameter(initial.expand(k, r, c, c).clone())
            self.cm_head = nn.Identity()
        else:
            self.cm_logits = nn.Parameter(torch.zeros(0), requires_grad=False)  # unused in pixel mode
            last = conv(cm_hidden_channels or feature_channels, k * r * c * c, kernel_size=1)
            nn.init.zeros_(last.weight)
            with torch.no_grad():
                last.bias.copy_(initial.expand(k, r, c, c).reshape(-1))
            layers: list[nn.Module] = []
            if cm_hidden_channels:
                layers += [conv(feature_channels, cm_hidden_channels, kernel_size=3, padding=1), nn.ReLU()]
            self.cm_head = nn.Sequential(*layers, last)
        self.set_output_mode(output_mode)

    @classmethod
    def build(cls, num_raters: int = 4, num_structures: int = 1, backbone: BackboneConfig | None = None,
              **kwargs: Any) -> ConfusionMatrixNet:
        """The whole network from plain arguments; ``kwargs`` go to the constructor (``mode``, ``trace_weight``...)."""
        config = backbone or BackboneConfig()
        return cls(config.build(), num_raters, config.feature_channels, num_structures=num_structures,
                   spatial_dims=config.spatial_dims, **kwargs)

    # ------------------------------------------------------------------ output groups
    def output_groups(self) -> dict[str, int]:
        groups: dict[str, int] = {}
        if self.output_mode != "true_label":
            groups["personalized"] = self.num_structures * self.num_raters
        if self.output_mode != "personalized":
            groups["consensus"] = self.num_structures
        return groups

    @torch.jit.unused
    def split_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.add_rater_views(super().split_outputs(logits))  # p is the consensus; true_label is rater-blind

    # ------------------------------------------------------------------ the model
    def true_log_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``log p``: ``(B, K, 2, *sp)``, the estimated true label's log-distribution per structure."""
        logits = self.segmentation_head(features)
        shape = [logits.shape[0], self.num_structures, self.num_classes] + list(logits.shape[2:])
        return F.log_softmax(logits.reshape(shape), dim=2)

    def confusion_log_matrices(self, features: torch.Tensor) -> torch.Tensor:
        """``log CM``, rows normalised: ``(K, R, 2, 2)`` (global) or ``(B, K, R, 2, 2, *sp)`` (pixel)."""
        if self.mode == "global":
            return F.log_softmax(self.cm_logits, dim=-1)
        logits = self.cm_head(features)
        shape = [logits.shape[0], self.num_structures, self.num_raters, self.num_classes, self.num_classes]
        return F.log_softmax(logits.reshape(shape + list(logits.shape[2:])), dim=4)

    def _outputs(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(true-label logits (B, K, *sp), rater logits (B, K * R, *sp), log CM)."""
        log_p = self.true_log_probabilities(features)
        log_cm = self.confusion_log_matrices(features)
        log_pr = rater_log_probabilities(log_p, log_cm)  # (B, K, R, 2, *sp)
        rater_logits = log_pr[:, :, :, 1] - log_pr[:, :, :, 0]
        rater_logits = rater_logits.reshape([rater_logits.shape[0], -1] + list(rater_logits.shape[3:]))
        return log_p[:, :, 1] - log_p[:, :, 0], rater_logits, log_cm

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        true_logits, rater_logits, _ = self._outputs(self.backbone(image))
        if self.output_mode == "personalized":
            return rater_logits
        if self.output_mode == "true_label":
            return true_logits
        return torch.cat([rater_logits, true_logits], dim=1)

    # ------------------------------------------------------------------ training
    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "cross_entropy", "trace"}``; ``label`` (B, K * R, *sp), ``rater_mask`` (B, K * R) or (B, R).

        ``trace`` is the mean trace (in [0, 2]) of the matrices the present raters use; the loss adds
        ``trace_weight * trace``."""
        k, r = self.num_structures, self.num_raters
        if label.dim() == image.dim() and label.shape[1] != k * r:
            raise MultiRaterDataError(
                f"the rater stack has {label.shape[1]} channels but the network was built for K x R = {k} x {r} "
                "(structure-major); fix: set num_raters / num_structures in the config to the datalist's."
            )
        if rater_mask is not None and k > 1 and tuple(rater_mask.shape) == (label.shape[0], r):
            rater_mask = torch.as_tensor(rater_mask).repeat(1, k)
        label, present = check_multirater_batch(image, label, rater_mask, k * r)
        if not bool(present.any()):
            raise MultiRaterDataError("no rater annotated any sample of the batch (rater_mask all False).")
        _, rater_logits, log_cm = self._outputs(self.backbone(image))
        weights = present.to(image.dtype).reshape(list(present.shape) + [1] * (image.dim() - 2)).expand_as(label)
        bce = F.binary_cross_entropy_with_logits(rater_logits, label, reduction="none")
        cross_entropy = (bce * weights).sum() / weights.sum()
        diagonal = torch.diagonal(log_cm.exp(), dim1=-2, dim2=-1).sum(-1)  # (K, R) or (B, K, R, *sp)
        if self.mode == "global":
            per_pair = diagonal.reshape(1, k * r).expand(label.shape[0], k * r)
        else:
            per_pair = diagonal.reshape(list(diagonal.shape[:3]) + [-1]).mean(-1).reshape(label.shape[0], k * r)
        pair_weights = present.to(image.dtype)
        trace = (per_pair * pair_weights).sum() / pair_weights.sum()
        return {"loss": cross_entropy + self.trace_weight * trace, "cross_entropy": cross_entropy, "trace": trace}

    @torch.jit.unused
    def confusion_matrices(self, image: torch.Tensor | None = None) -> torch.Tensor:
        """The matrices as probabilities: ``(K, R, 2, 2)`` (global; no image needed) or ``(B, K, R, 2, 2, *sp)``."""
        if self.mode == "global":
            return F.softmax(self.cm_logits, dim=-1)
        if image is None:
            raise ValueError("CM-Pixel's matrices depend on the image: pass it.")
        return self.confusion_log_matrices(self.backbone(image)).exp()
