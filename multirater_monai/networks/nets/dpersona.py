"""D-Persona (Wu et al., CVPR 2024): diversified (Stage I) then personalized (Stage II) segmentation.

Stage I (``stage=1``) is a Probabilistic U-Net trained with the bound-constrained loss (eqs. 2-6):

    L_stage1 = beta_kl * KL(q || p) + alpha * Dice(P_post, A_random) + beta * L_bound
               (+ l2_weight * L2, Kohl et al.)

Every Dice (eqs. 4, 5, 9) is :class:`~multirater_monai.losses.BinaryGeneralizedDiceLoss`: the
generalized Dice over the whole batch with a background class, so empty masks train.

where ``P_post`` decodes a posterior sample, ``A_random`` is a random PRESENT rater, and
``L_bound`` (:class:`~multirater_monai.losses.BoundLoss`) compares the intersection/union of K prior
samples with those of the present annotations. Paper values: alpha 1, beta 0.5, K 10, D 6.
(Eq. 2 writes KL(prior, posterior); we use the usual KL(posterior || prior) of Kohl et al.)

Stage II (``stage=2``, or ``start_stage(2)`` after Stage I) trains only the per-rater projection
heads (eqs. 7-9): rater i's query ``q_i = GAP(F_i^proj(features))`` attends over a bank of M samples
of the FROZEN prior ``z_m = mu(X) + sigma(X) * eps_m`` (key = value = bank, eq. 8):

    z~_i = softmax(q_i^T Z) Z^T,      P_i = head(features, z~_i)

and the loss is ``sum over raters i of Dice(P_i, A_i)``, each Dice over the samples of the batch where
rater i is present. Backbone and prior run under ``torch.no_grad`` and in eval mode (BatchNorm statistics do
not move); the frozen head is differentiated only with respect to its input code.

Inference ``forward(image)`` returns logits ``(B, S, *sp)``: S prior samples when
``output_mode == "samples"`` (Stage I default) or R personalized outputs when
``output_mode == "personalized"`` (Stage II default), or both, personalized first, when
``output_mode == "personalized+samples"`` (R + S channels from one backbone pass: what the inference
bundle writes). Both noise sets (S sample codes, M bank codes)
are fixed buffers drawn from ``sample_seed`` (see :class:`ProbabilisticUNet`); during Stage II
training a fresh bank is drawn at every step, as the paper samples the bank from the prior.

The module tree (``backbone``, ``prior``, ``posterior``, ``head``, ``rater_heads``) is the same in both
stages, so a Stage II network loads the Stage I checkpoint with ``strict=True``.

TorchScript: ``torch.jit.trace(net.eval(), image)`` works for both encoders and is the tested
export path (use ``ckpt_export --use_trace``); ``torch.jit.script`` also works with
``encoder="small"`` but not with ``"resnet34"`` (MONAI's ResNet blocks are not scriptable). A trace
records the current ``output_mode``: export each mode separately if both are wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ...losses.binary_generalized_dice import BinaryGeneralizedDiceLoss
from ...losses.bound_loss import BoundLoss
from ..blocks.backbone import BackboneConfig
from ..blocks.gaussian_encoder import AxisAlignedGaussianEncoder
from ..blocks.latent_head import LatentCombiningHead
from ..blocks.rater_projection import RaterProjectionHeads
from ..blocks.sampling import KEEP, fixed_noise
from ..rater_batch import check_multirater_batch, random_present_rater
from .prob_unet import ProbabilisticUNet, build_latent_parts

__all__ = ["DPersona", "OUTPUT_MODES"]

OUTPUT_MODES = ("samples", "personalized", "personalized+samples")
DPERSONA_ENCODER_CHANNELS = (16, 32, 64, 128, 256)  # prior and posterior widths with encoder="resnet34"


class DPersona(ProbabilisticUNet):
    """D-Persona network; see the module docstring.

    Args:
        backbone, prior, posterior, head: as :class:`ProbabilisticUNet`.
        rater_heads: :class:`RaterProjectionHeads` with ``num_raters`` heads.
        latent_dim: D (paper: 6).
        num_samples: S, samples returned in ``"samples"`` mode.
        bank_size: M, prior bank size of Stage II (paper: 100).
        num_bound_samples: K, prior samples of the bound loss (paper: 10).
        alpha: weight of the random-rater Dice (paper: 1).
        beta: weight of the bound loss (paper: 0.5).
        beta_kl: weight of the KL term (paper: 1).
        l2_weight: weight of the L2 penalty on :attr:`l2_modules` of the current stage.
        seg_loss: Stage I loss on ``(logits (B, 1, *sp), target (B, 1, *sp))``; default Dice.
        bound_loss: default :class:`BoundLoss`.
        stage: 1 or 2 (2 freezes everything but ``rater_heads`` at construction).
        output_mode: ``"samples"``, ``"personalized"`` or ``"personalized+samples"``; default by stage.
        sample_seed: seed of the fixed inference noise (None: fresh noise every call).
    """

    __jit_unused_properties__ = ProbabilisticUNet.__jit_unused_properties__ + ["bank_size"]
    output_modes = OUTPUT_MODES
    posterior_sees_rater_stack = True  # eq. 1: q(z | X, A_set)
    stage_modules = (("backbone", "prior", "posterior", "head"), ("rater_heads",))
    # "an L2-regularization term as [18, 36]" (Sec. 4.2) names no parameters: as the published code, Stage I
    # penalises the latent parts (prior, posterior, head: 3.9 M of 27.7 M in the paper configuration), not
    # the backbone; Stage II its only trained part, the projection heads
    l2_modules = (("prior", "posterior", "head"), ("rater_heads",))

    def __init__(
        self,
        backbone: nn.Module,
        prior: AxisAlignedGaussianEncoder,
        posterior: AxisAlignedGaussianEncoder,
        head: LatentCombiningHead,
        rater_heads: RaterProjectionHeads,
        latent_dim: int = 6,
        num_samples: int = 16,
        bank_size: int = 100,
        num_bound_samples: int = 10,
        alpha: float = 1.0,
        beta: float = 0.5,
        beta_kl: float = 1.0,
        l2_weight: float = 1e-5,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        bound_loss: Callable[..., torch.Tensor] | None = None,
        stage: int = 1,
        output_mode: str | None = None,
        sample_seed: int | None = 0,
    ) -> None:
        super().__init__(
            backbone, prior, posterior, head, latent_dim=latent_dim, num_raters=rater_heads.num_raters,
            num_samples=num_samples, beta_kl=beta_kl, l2_weight=l2_weight, seg_loss=seg_loss,
            sample_seed=sample_seed,
        )
        if rater_heads.latent_dim != latent_dim:
            raise ValueError(f"rater_heads must produce latent_dim={latent_dim} queries.")
        self.rater_heads = rater_heads
        self.num_bound_samples = int(num_bound_samples)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self._losses["bound"] = bound_loss if bound_loss is not None else BoundLoss()
        self._losses["rater_dice"] = BinaryGeneralizedDiceLoss(reduction="none")  # eq. 9: one Dice per rater
        # a different stream from the sample noise, so bank and samples are not the same codes
        bank_seed = None if sample_seed is None else int(sample_seed) + 1
        self.register_buffer("bank_noise", fixed_noise(bank_size, latent_dim, bank_seed), persistent=False)
        self.start_stage(stage)
        if output_mode is not None:
            self.set_output_mode(output_mode)

    @classmethod
    def build(
        cls,
        num_raters: int = 4,
        backbone: BackboneConfig | None = None,
        latent_dim: int = 6,
        prior_channels: Sequence[int] | None = None,
        convs_per_block: int | None = None,
        head_hidden: int = 16,
        head_convs: int = 3,
        projection_channels: Sequence[int] = (32, 16),
        projection_strides: Sequence[int] = (2, 2, 1),
        **kwargs: Any,
    ) -> DPersona:
        """The whole network from plain arguments; ``kwargs`` go to the constructor (``num_samples``,
        ``bank_size``, ``num_bound_samples``, ``alpha``, ``beta``, ``beta_kl``, ``l2_weight``, ``stage``,
        ``output_mode``, ``sample_seed``, ...). Paper configuration: ``BackboneConfig(encoder="resnet34")``
        (then the encoders default to :data:`DPERSONA_ENCODER_CHANNELS` x 3 convolutions),
        ``latent_dim=6``, ``num_bound_samples=10``, ``bank_size=100``."""
        backbone = backbone or BackboneConfig()
        if prior_channels is None and backbone.encoder == "resnet34":
            # the paper does not list the encoders' widths; the published configuration's 16-32-64-128-256
            # (3 convolutions per level) gives the paper's parameter count (see the bundle README), where
            # Kohl et al.'s 32-64-128-192 costs 2.8x the encoder work for fewer
            # parameters (93 against 33 GFLOP per step, issue 18's count)
            prior_channels = DPERSONA_ENCODER_CHANNELS
        parts = build_latent_parts(num_raters, backbone, latent_dim, prior_channels, convs_per_block, head_hidden,
                                   head_convs)
        rater_heads = RaterProjectionHeads(
            backbone.feature_channels, latent_dim, num_raters, projection_channels, projection_strides,
            spatial_dims=backbone.spatial_dims,
        )
        return cls(**parts, rater_heads=rater_heads, latent_dim=latent_dim, **kwargs)

    @staticmethod
    def default_seg_loss() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Eq. 4: "Dice loss as [36]": the generalized Dice loss over the batch (the published implementation's
        choice), so that a rater's empty mask still trains (see :class:`BinaryGeneralizedDiceLoss`)."""
        return BinaryGeneralizedDiceLoss()

    # ------------------------------------------------------------------ stage control
    @property
    def bank_size(self) -> int:
        return int(self.bank_noise.shape[0])

    def output_groups(self) -> dict[str, int]:
        if self.output_mode == "samples":
            return {"samples": self.num_samples}
        if self.output_mode == "personalized":
            return {"personalized": self.num_raters}
        return {"personalized": self.num_raters, "samples": self.num_samples}

    @torch.jit.unused
    def set_sampling(self, num_samples: int | None = None, sample_seed: Any = KEEP, bank_size: int | None = None) -> None:
        """As :meth:`ProbabilisticUNet.set_sampling`, plus the Stage II bank size M."""
        super().set_sampling(num_samples, sample_seed)
        bank_seed = None if self.sample_seed is None else int(self.sample_seed) + 1
        rows = self.bank_size if bank_size is None else int(bank_size)
        self.bank_noise = fixed_noise(rows, self.latent_dim, bank_seed, like=self.bank_noise)

    @torch.jit.unused
    def start_stage(self, stage: int) -> DPersona:
        """Stage 2 freezes everything but the projection heads and switches to personalized outputs."""
        super().start_stage(stage)
        self.output_mode = "personalized" if self.stage == 2 else "samples"
        return self

    # ------------------------------------------------------------------ inference
    def _personalized_codes(
        self, features: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, bank_noise: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 7-8: ``(B, R, D)`` codes, each a softmax-weighted mix of the ``(B, M, D)`` prior bank."""
        queries = self.rater_heads(features)  # (B, R, D)
        bank = mu.unsqueeze(1) + torch.exp(log_sigma).unsqueeze(1) * bank_noise.unsqueeze(0)  # (B, M, D)
        attention = torch.softmax(torch.bmm(queries, bank.transpose(1, 2)), dim=-1)  # (B, R, M)
        return torch.bmm(attention, bank)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image)
        mu, log_sigma = self.prior.encode(image)
        if self.output_mode == "samples":
            codes = self._prior_codes(mu, log_sigma, self.sample_noise)
        else:
            noise = self.bank_noise
            if self.random_sampling:
                noise = torch.randn_like(noise)
            codes = self._personalized_codes(features, mu, log_sigma, noise)
            if self.output_mode == "personalized+samples":
                codes = torch.cat([codes, self._prior_codes(mu, log_sigma, self.sample_noise)], dim=1)
        return self.head(features, codes)  # one batched head call for every code

    # ------------------------------------------------------------------ training
    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Stage I: ``loss, kl, seg, bound, bound_inter, bound_union, l2``.
        Stage II: ``loss, seg_personalized, seg_rater1..R, l2``."""
        label, rater_mask = check_multirater_batch(image, label, rater_mask, self.num_raters)
        if self.stage == 2:
            return self._stage2_objective(image, label, rater_mask)
        present = rater_mask.view(rater_mask.shape + (1,) * (label.dim() - 2)).to(label.dtype)
        post_logits, prior_logits, kl = self._latent_terms(image, label * present, self.num_bound_samples)
        seg = self._losses["seg"](post_logits, random_present_rater(label, rater_mask))
        if prior_logits is not None:
            bound_inter, bound_union = self._losses["bound"].terms(prior_logits, label, rater_mask)
        else:  # K = 0: plain Probabilistic U-Net
            bound_inter = bound_union = torch.zeros((), device=image.device)
        bound = bound_inter + bound_union
        l2 = self.l2_penalty()
        loss = self.beta_kl * kl + self.alpha * seg + self.beta * bound + self.l2_weight * l2
        return {
            "loss": loss, "kl": kl, "seg": seg, "bound": bound,
            "bound_inter": bound_inter, "bound_union": bound_union, "l2": l2,
        }

    def _stage2_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # frozen: no graph through backbone and prior
            features = self.backbone(image)
            mu, log_sigma = self.prior.encode(image)
        bank_noise = torch.randn_like(self.bank_noise)
        codes = self._personalized_codes(features, mu, log_sigma, bank_noise)
        logits = self.head(features, codes)  # (B, R, *sp); the gradient flows through the code only
        per_rater = self._losses["rater_dice"](logits, label, rater_mask)  # (R,), each over the batch's present
        seg = per_rater.sum()
        l2 = self.l2_penalty()
        terms = {"loss": seg + self.l2_weight * l2, "seg_personalized": seg}
        for i in range(self.num_raters):
            terms[f"seg_rater{i + 1}"] = per_rater[i]
        terms["l2"] = l2
        return terms
