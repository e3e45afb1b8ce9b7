"""AVAP (Guo et al.): annotator variation (multi-class agreement) and annotator preference (dynamic filters).

One encoder-decoder backbone gives the feature map ``F_img`` (eq. 1). On it:

* **AVM** (annotator variation): per structure an :class:`AgreementBranch` predicts R + 1 agreement
  classes, class m = "exactly m raters marked this pixel" (eqs. 2-3); divided by R the predicted
  class is a calibrated probability map (``data/agreement_label.py``).
* **APM** (annotator preference): a :class:`DynamicFilterHead` whose controller reads
  ``GAP(F_img) || V_m`` (one-hot code of rater m) and generates three convolutions giving rater m's
  mask, one channel per structure (eqs. 4-6).

Two-step training (the paper's best, Table V), loss Dice + cross-entropy in both steps (eqs. 7-9):

* step 1 (``stage=1``): backbone + AVM on the agreement label of each structure;
* step 2 (``start_stage(2)``): backbone and AVM frozen (no autograd, BatchNorm in eval mode); the APM
  trains with a randomly drawn PRESENT rater's code per sample (``stage2_raters="random"``, the paper)
  or with every present rater's code at once (``"all"``: same features, one head call).

Both Dice terms sum over every voxel of the batch (eq. 8, ``batch=True``) rather than averaging
per-image Dice: LIDC slices where a reader drew nothing would otherwise weigh as much as a whole
nodule. Missing raters: the agreement label rescales the count of the present raters to R (the
fraction of raters keeps its meaning); the APM is never trained on a missing rater's empty channel.

Label layout (the project's multi-structure contract): ``label`` is ``(B, R * K, *sp)``
structure-major, ``rater_mask`` ``(B, R * K)`` (or ``(B, R)``).

Inference ``forward(image)`` returns ONE tensor of logits, by ``output_mode``:

* ``"all"`` (default): ``K * (R + 1)`` agreement-class logits (structure k's classes 0..R), then
  ``K * R`` personalized logits (structure-major: structure k's raters A1..AR);
* ``"agreement"``: the first group only; ``"personalized"``: the second group only.

:meth:`split_outputs` turns it into the calibrated map ``(K, *sp)`` and the personalized
probabilities ``(K * R, *sp)``. TorchScript: ``torch.jit.script`` works with
``encoder="small"``; use ``torch.jit.trace`` with ``"resnet34"`` (see ``backbone.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from ...data.agreement_label import CALIBRATION_MODES, MISSING_RATER_RULES, agreement_label, agreement_probability
from ...utils.errors import MultiRaterDataError
from ..blocks.agreement_branch import AgreementBranch
from ..blocks.backbone import BackboneConfig
from ..blocks.dynamic_filter_head import DynamicFilterHead
from ..method import MultiRaterMethod
from ..rater_batch import check_structured_batch

__all__ = ["AVAP", "AVAP_OUTPUT_MODES", "STAGE2_RATER_DRAWS"]

AVAP_OUTPUT_MODES = ("all", "agreement", "personalized")
STAGE2_RATER_DRAWS = ("random", "all")
_SMOOTH = 1e-5


class AVAP(MultiRaterMethod):
    """AVAP network; see the module docstring.

    Args:
        backbone: feature network ``image -> (B, C, *sp)`` (e.g. :class:`UNetFeatureBackbone`).
        agreement_branches: one :class:`AgreementBranch` per structure (K of them).
        preference_head: :class:`DynamicFilterHead` with ``code_length = R`` and ``out_channels = K``.
        num_raters: R.
        calibration: ``"argmax"`` (predicted class / R), ``"expectation"`` or ``"median"`` (median class / R,
            see :func:`agreement_probability`); used by
            :meth:`calibrated_map` and recorded for the post-processing.
        missing_raters: agreement-label rule for samples with missing raters (``"rescale"`` or ``"error"``).
        stage2_raters: ``"random"`` (one present rater per sample, the paper) or ``"all"``.
        stage: 1 or 2 (2 freezes backbone and AVM at construction).
        output_mode: one of :data:`AVAP_OUTPUT_MODES`.
    """

    output_modes = AVAP_OUTPUT_MODES
    stage_modules = (("backbone", "agreement_branches"), ("preference_head",))

    def __init__(
        self,
        backbone: nn.Module,
        agreement_branches: Sequence[nn.Module],
        preference_head: DynamicFilterHead,
        num_raters: int,
        calibration: str = "argmax",
        missing_raters: str = "rescale",
        stage2_raters: str = "random",
        stage: int = 1,
        output_mode: str = "all",
    ) -> None:
        num_structures = len(agreement_branches)
        if num_structures < 1:
            raise ValueError("AVAP needs at least one agreement branch (one per structure).")
        super().__init__(num_raters, num_structures)
        if preference_head.code_length != num_raters or preference_head.out_channels != num_structures:
            raise ValueError(
                f"preference_head must take R={num_raters}-long rater codes and give K={num_structures} outputs, "
                f"got code_length={preference_head.code_length}, out_channels={preference_head.out_channels}."
            )
        if calibration not in CALIBRATION_MODES:
            raise ValueError(f"calibration must be one of {CALIBRATION_MODES}, got {calibration!r}.")
        if missing_raters not in MISSING_RATER_RULES:
            raise ValueError(f"missing_raters must be one of {MISSING_RATER_RULES}, got {missing_raters!r}.")
        if stage2_raters not in STAGE2_RATER_DRAWS:
            raise ValueError(f"stage2_raters must be one of {STAGE2_RATER_DRAWS}, got {stage2_raters!r}.")
        self.backbone = backbone
        self.agreement_branches = nn.ModuleList(agreement_branches)
        self.preference_head = preference_head
        self.calibration = calibration
        self.missing_raters = missing_raters
        self.stage2_raters = stage2_raters
        self.register_buffer("rater_codes", torch.eye(self.num_raters), persistent=False)
        # kept out of the module tree (a plain dict), as in ProbabilisticUNet: no state, and TorchScript
        # does not try to compile it with forward
        self._losses = {
            "agreement": DiceCELoss(to_onehot_y=True, softmax=True, batch=True, smooth_nr=_SMOOTH, smooth_dr=_SMOOTH)
        }
        self.start_stage(stage)
        self.set_output_mode(output_mode)

    @classmethod
    def build(
        cls,
        num_raters: int = 4,
        num_structures: int = 1,
        backbone: BackboneConfig | None = None,
        agreement_channels: int = 16,
        preference_hidden: int = 8,
        use_rater_code: bool = True,
        use_features: bool = True,
        feature_norm: str = "none",
        **kwargs: Any,
    ) -> AVAP:
        """The whole network from plain arguments; ``kwargs`` go to the constructor (``calibration``,
        ``missing_raters``, ``stage2_raters``, ``stage``, ``output_mode``). ``use_rater_code`` /
        ``use_features`` are the Table IV ablation of the controller's input; ``feature_norm``
        (``"none"`` / ``"layer"``) normalises ``GAP(F_img)`` before the controller (see
        :class:`DynamicFilterHead`)."""
        config = backbone or BackboneConfig()
        backbone_net = config.build()  # built first: the initialisation depends on the order
        features, dims = config.feature_channels, config.spatial_dims
        branches = [AgreementBranch(features, num_raters, agreement_channels, dims) for _ in range(num_structures)]
        head = DynamicFilterHead(features, num_raters, preference_hidden, num_structures, dims,
                                 use_features=use_features, use_code=use_rater_code, feature_norm=feature_norm)
        return cls(backbone_net, branches, head, num_raters=num_raters, **kwargs)

    # ------------------------------------------------------------------ output groups
    def output_groups(self) -> dict[str, int]:
        groups: dict[str, int] = {}
        if self.output_mode != "personalized":
            groups["agreement_logits"] = self.num_structures * (self.num_raters + 1)
        if self.output_mode != "agreement":
            groups["personalized"] = self.num_structures * self.num_raters
        return groups

    @torch.jit.unused
    def split_outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``calibrated`` (K, *sp) from the agreement classes (see ``calibration``) and/or ``personalized``
        (K * R, *sp) sigmoid probabilities, for one image's logits (C, *sp)."""
        groups = self.output_groups()
        if logits.shape[0] != sum(groups.values()):
            raise MultiRaterDataError(
                f"the output has {logits.shape[0]} channels; AVAP with R={self.num_raters} raters and "
                f"K={self.num_structures} structures in mode {self.output_mode!r} gives {groups}; fix: set "
                "num_raters / num_structures to the network's."
            )
        out: dict[str, torch.Tensor] = {}
        parts = dict(zip(groups, torch.split(logits, list(groups.values()), dim=0)))
        if "agreement_logits" in parts:
            out["calibrated"] = self.calibrated_map(parts["agreement_logits"][None])[0]
        if "personalized" in parts:
            out["personalized"] = torch.sigmoid(parts["personalized"])
        return out

    # ------------------------------------------------------------------ inference
    def agreement_logits(self, features: torch.Tensor) -> torch.Tensor:
        """AVM: ``(B, K * (R + 1), *sp)``, structure k's classes 0..R in channels ``k(R+1) .. k(R+1)+R``."""
        return torch.cat([branch(features) for branch in self.agreement_branches], dim=1)

    def personalized_logits(self, features: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """APM for ``codes`` (B, N, R): ``(B, K * N, *sp)`` logits, structure-major."""
        out = self.preference_head(features, codes)  # (B, N, K, *sp)
        return out.transpose(1, 2).reshape([out.shape[0], -1] + list(out.shape[3:]))

    def calibrated_map(self, agreement_logits: torch.Tensor) -> torch.Tensor:
        """``(B, K, *sp)`` calibrated probability per structure (see ``calibration``)."""
        return agreement_probability(agreement_logits, self.num_raters, self.num_structures, self.calibration)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image)
        outputs: list[torch.Tensor] = []
        if self.output_mode != "personalized":
            outputs.append(self.agreement_logits(features))
        if self.output_mode != "agreement":
            codes = self.rater_codes.unsqueeze(0).expand(features.shape[0], self.num_raters, self.num_raters)
            outputs.append(self.personalized_logits(features, codes))
        return torch.cat(outputs, dim=1)

    # ------------------------------------------------------------------ training
    def _check_batch(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float label (B, R*K, *sp) and bool mask (B, K, R)."""
        label, mask = check_structured_batch(image, label, rater_mask, self.num_raters, self.num_structures)
        return label, mask.reshape(label.shape[0], self.num_structures, self.num_raters)

    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Step 1: ``loss, avm`` (+ ``avm_s1..K`` with several structures). Step 2: ``loss, apm_dice, apm_ce``."""
        label, mask = self._check_batch(image, label, rater_mask)
        if self.stage == 2:
            return self._stage2_objective(image, label, mask)
        target = agreement_label(label, mask.flatten(1), self.num_structures, self.missing_raters)  # (B, K, *sp)
        logits = self.agreement_logits(self.backbone(image))
        classes = self.num_raters + 1
        per_structure = [
            self._losses["agreement"](logits[:, k * classes:(k + 1) * classes], target[:, k:k + 1])
            for k in range(self.num_structures)
        ]
        avm = torch.stack(per_structure).sum()
        terms = {"loss": avm, "avm": avm}
        if self.num_structures > 1:
            terms.update({f"avm_s{k + 1}": v for k, v in enumerate(per_structure)})
        return terms

    def _stage2_objective(self, image: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = label.shape[0]
        with torch.no_grad():  # frozen: no graph through the backbone
            features = self.backbone(image)
        rater_present = mask.any(dim=1)  # (B, R): the rater annotated at least one structure
        if not bool(rater_present.any(dim=1).all()):
            raise MultiRaterDataError("a sample has no annotating rater (rater_mask all False); drop it from the datalist.")
        if self.stage2_raters == "random":
            raters = torch.multinomial(rater_present.float(), 1)  # (B, 1): one present rater per sample
        else:
            raters = torch.arange(self.num_raters, device=label.device).expand(batch, self.num_raters)
        codes = self.rater_codes[raters]  # (B, N, R)
        logits = self.preference_head(features, codes)  # (B, N, K, *sp)
        spatial = label.shape[2:]
        stack = label.reshape(batch, self.num_structures, self.num_raters, *spatial).transpose(1, 2)  # (B, R, K, *sp)
        index = raters.reshape(batch, -1, *([1] * (1 + len(spatial)))).expand(-1, -1, self.num_structures, *spatial)
        target = torch.gather(stack, 1, index)  # (B, N, K, *sp)
        weight = torch.gather(mask.transpose(1, 2), 1, raters[..., None].expand(-1, -1, self.num_structures))
        weight = weight.to(logits.dtype)  # (B, N, K): 0 for a missing rater (only with "all")
        dims = tuple(range(3, logits.dim()))
        prob = torch.sigmoid(logits)
        inter = ((prob * target).sum(dims) * weight).sum(dim=(0, 1))  # per structure, over the batch (eq. 8)
        denom = ((prob + target).sum(dims) * weight).sum(dim=(0, 1))
        dice = (1.0 - (2.0 * inter + _SMOOTH) / (denom + _SMOOTH)).mean()
        ce_map = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dims)  # (B, N, K)
        ce = ((ce_map * weight).sum(dim=(0, 1)) / weight.sum(dim=(0, 1)).clamp(min=1.0)).mean()
        return {"loss": dice + ce, "apm_dice": dice, "apm_ce": ce}
