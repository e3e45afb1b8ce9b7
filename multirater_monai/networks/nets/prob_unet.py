"""Probabilistic U-Net (Kohl et al., NeurIPS 2018) for multi-rater training.

Parts (shared with D-Persona): a U-Net feature backbone, a prior net ``p(z | X)``, a posterior net
``q(z | X, A_set)`` and a latent-combining head.

Training (``training_objective``): one posterior sample per image (``rsample``, so the gradient
reaches the posterior net), decoded by the head and compared by a Dice-type loss with ONE randomly
chosen PRESENT rater of that image (random label selection, Jensen et al. / Jungo et al.; missing
raters are never chosen); ``KL(q || p)`` computed analytically (``torch.distributions.kl_divergence``
of the two diagonal Gaussians); an L2 penalty on the trained parameters (Kohl et al.), reported
as its own term:

    loss = seg + beta_kl * kl + l2_weight * l2

Inference (``forward``): S samples ``z_s = mu(X) + sigma(X) * eps_s`` from the prior, decoded in one
batched head call over features computed once -> logits ``(B, S, *sp)``.

Sampling noise: with ``sample_seed`` an int (default 0) ``eps`` is a fixed ``(S, D)`` buffer drawn from
that seed, so inference is reproducible (and a TorchScript export reproduces it exactly); with
``sample_seed=None`` fresh noise is drawn at every call. ``set_sampling(num_samples=..., sample_seed=...)``
changes either. The noise buffers are not persistent: checkpoints do not depend on S.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.losses import DiceLoss
from torch import nn
from torch.distributions import kl_divergence

from ..blocks.backbone import BackboneConfig
from ..blocks.gaussian_encoder import AxisAlignedGaussianEncoder
from ..blocks.latent_head import LatentCombiningHead
from ..blocks.sampling import KEEP, fixed_noise
from ..method import MultiRaterMethod
from ..rater_batch import check_multirater_batch, random_present_rater

__all__ = ["ProbabilisticUNet", "build_latent_parts"]


def build_latent_parts(
    num_raters: int = 4,
    backbone: BackboneConfig | None = None,
    latent_dim: int = 6,
    prior_channels: Sequence[int] | None = None,
    convs_per_block: int | None = None,
    head_hidden: int = 16,
    head_convs: int = 3,
    out_channels: int = 1,
) -> dict[str, nn.Module]:
    """Backbone, prior, posterior and head (built in this order: the initialisation depends on it).

    ``prior_channels``/``convs_per_block`` default to Kohl et al.'s (32, 64, 128, 192) x 3 convolutions
    with ``encoder="resnet34"`` and to (16, 32, 64, 128) x 2 with ``encoder="small"``.
    """
    backbone = backbone or BackboneConfig()
    if prior_channels is None:
        prior_channels = (32, 64, 128, 192) if backbone.encoder == "resnet34" else (16, 32, 64, 128)
    if convs_per_block is None:
        convs_per_block = 3 if backbone.encoder == "resnet34" else 2
    image_channels, dims = backbone.in_channels, backbone.spatial_dims
    return {
        "backbone": backbone.build(),
        "prior": AxisAlignedGaussianEncoder(image_channels, latent_dim, prior_channels, dims, convs_per_block),
        "posterior": AxisAlignedGaussianEncoder(
            image_channels + num_raters, latent_dim, prior_channels, dims, convs_per_block
        ),
        "head": LatentCombiningHead(backbone.feature_channels, latent_dim, out_channels, head_hidden, head_convs),
    }


class ProbabilisticUNet(MultiRaterMethod):
    """Probabilistic U-Net with random-present-rater training and batched prior sampling.

    Args:
        backbone: feature network ``image -> (B, F, *sp)`` (e.g. :class:`UNetFeatureBackbone`).
        prior: :class:`AxisAlignedGaussianEncoder` on the image.
        posterior: :class:`AxisAlignedGaussianEncoder` on image + rater stack.
        head: :class:`LatentCombiningHead`.
        latent_dim: D (must match the encoders).
        num_raters: R; default: posterior input channels minus image channels.
        num_samples: S, samples returned by ``forward``.
        beta_kl: weight of the KL term.
        l2_weight: weight of the L2 penalty (0 skips computing it).
        seg_loss: loss ``(logits (B, 1, *sp), target (B, 1, *sp)) -> scalar``; default MONAI
            ``DiceLoss(sigmoid=True)`` (per-sample Dice, averaged).
        sample_seed: seed of the fixed inference noise, or None for fresh noise at every call.

    Use :meth:`build` to create the whole network from plain arguments (one ``_target_`` in a config).
    """

    output_modes = ("samples",)

    def __init__(
        self,
        backbone: nn.Module,
        prior: AxisAlignedGaussianEncoder,
        posterior: AxisAlignedGaussianEncoder,
        head: LatentCombiningHead,
        latent_dim: int = 6,
        num_raters: int | None = None,
        num_samples: int = 16,
        beta_kl: float = 1.0,
        l2_weight: float = 1e-5,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        sample_seed: int | None = 0,
    ) -> None:
        num_raters = int(num_raters if num_raters is not None else posterior.in_channels - prior.in_channels)
        if num_raters < 1 or posterior.in_channels != prior.in_channels + num_raters:
            raise ValueError(
                f"posterior in_channels ({posterior.in_channels}) must be image channels ({prior.in_channels}) "
                f"+ num_raters ({num_raters})."
            )
        super().__init__(num_raters)
        if prior.latent_dim != latent_dim or posterior.latent_dim != latent_dim or head.latent_dim != latent_dim:
            raise ValueError(f"prior, posterior and head must all use latent_dim={latent_dim}.")
        self.backbone = backbone
        self.prior = prior
        self.posterior = posterior
        self.head = head
        self.latent_dim = latent_dim
        self.beta_kl = float(beta_kl)
        self.l2_weight = float(l2_weight)
        # Losses are kept out of the module tree (a plain dict): they hold no parameters, must not
        # appear in state_dict, and TorchScript then does not try to compile them with forward.
        self._losses = {
            "seg": seg_loss if seg_loss is not None else DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
        }
        self.sample_seed = sample_seed
        self.random_sampling = sample_seed is None
        self.register_buffer("sample_noise", fixed_noise(num_samples, latent_dim, sample_seed), persistent=False)

    # ------------------------------------------------------------------ construction helpers
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
        **kwargs: Any,
    ) -> ProbabilisticUNet:
        """The whole network from plain arguments; ``kwargs`` go to the constructor
        (``num_samples``, ``beta_kl``, ``l2_weight``, ``seg_loss``, ``sample_seed``)."""
        parts = build_latent_parts(num_raters, backbone, latent_dim, prior_channels, convs_per_block, head_hidden,
                                   head_convs)
        return cls(**parts, latent_dim=latent_dim, num_raters=num_raters, **kwargs)

    @property
    def num_samples(self) -> int:
        return int(self.sample_noise.shape[0])

    def output_groups(self) -> dict[str, int]:
        return {"samples": self.num_samples}

    @torch.jit.unused
    def set_sampling(self, num_samples: int | None = None, sample_seed: Any = KEEP) -> None:
        """Change the number of inference samples and/or the seed (None: fresh noise every call)."""
        if sample_seed is not KEEP:
            self.sample_seed = sample_seed
            self.random_sampling = sample_seed is None
        rows = self.num_samples if num_samples is None else int(num_samples)
        self.sample_noise = fixed_noise(rows, self.latent_dim, self.sample_seed, like=self.sample_noise)

    # ------------------------------------------------------------------ inference
    def _prior_codes(self, mu: torch.Tensor, log_sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``(B, S, D)`` codes ``mu + sigma * eps`` for the ``(S, D)`` noise (fresh when random_sampling)."""
        if self.random_sampling:
            noise = torch.randn_like(noise)
        return mu.unsqueeze(1) + torch.exp(log_sigma).unsqueeze(1) * noise.unsqueeze(0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """S prior samples: logits ``(B, S, *sp)``; the backbone runs once."""
        features = self.backbone(image)
        mu, log_sigma = self.prior.encode(image)
        return self.head(features, self._prior_codes(mu, log_sigma, self.sample_noise))

    # ------------------------------------------------------------------ training
    def l2_penalty(self) -> torch.Tensor:
        """Sum of squares of the trained parameters (0 without computing when ``l2_weight == 0``)."""
        params = self.parameters_to_train()
        if self.l2_weight == 0 or not params:
            return torch.zeros((), device=self.sample_noise.device)
        return torch.stack([p.pow(2).sum() for p in params]).sum()

    def _latent_terms(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor, num_prior_samples: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Posterior-sample logits ``(B, 1, *sp)``, ``num_prior_samples`` prior-sample logits
        ``(B, K, *sp)`` (or None) from ONE head call, and the batch-mean ``KL(q || p)``."""
        features = self.backbone(image)
        present = rater_mask.view(rater_mask.shape + (1,) * (label.dim() - 2)).to(label.dtype)
        prior = self.prior(image)
        posterior = self.posterior(torch.cat([image, label * present], dim=1))
        codes = [posterior.rsample().unsqueeze(1)]
        if num_prior_samples > 0:
            codes.append(prior.rsample((num_prior_samples,)).transpose(0, 1))  # (B, K, D)
        logits = self.head(features, torch.cat(codes, dim=1))
        kl = kl_divergence(posterior, prior).mean()
        return logits[:, :1], (logits[:, 1:] if num_prior_samples > 0 else None), kl

    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "seg", "kl", "l2"}`` for a batch: image ``(B, C, *sp)``, rater stack ``(B, R, *sp)``,
        rater mask ``(B, R)`` bool (None: all present)."""
        label, rater_mask = check_multirater_batch(image, label, rater_mask, self.num_raters)
        post_logits, _, kl = self._latent_terms(image, label, rater_mask)
        seg = self._losses["seg"](post_logits, random_present_rater(label, rater_mask))
        l2 = self.l2_penalty()
        loss = seg + self.beta_kl * kl + self.l2_weight * l2
        return {"loss": loss, "seg": seg, "kl": kl, "l2": l2}
