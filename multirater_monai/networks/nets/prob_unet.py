"""Probabilistic U-Net (Kohl et al., NeurIPS 2018) for multi-rater training.

Parts (shared with D-Persona): a U-Net feature backbone, a prior net ``p(z | X)``, a posterior net
``q(z | X, Y)`` and a latent-combining head.

Training (``training_objective``): for each image ONE randomly chosen PRESENT rater's mask ``Y``
(random label selection, Jensen et al. / Jungo et al.; missing raters are never chosen) is the
segmentation the posterior sees and the one its sample must reconstruct, as in Kohl et al. (the
posterior is conditioned on the very segmentation it explains; one conditioned on the whole rater
stack cannot tell which rater it must explain, its KL is pushed to the prior and the prior samples
collapse). One posterior sample per image (``rsample``, so the gradient reaches the posterior net) is
decoded by the head and scored against ``Y`` by Kohl et al.'s reconstruction term, the pixel-wise
binary cross entropy SUMMED over the pixels of an image (the negative log-likelihood of ``Y``; mean
over the batch); ``KL(q || p)`` computed analytically
(:func:`~multirater_monai.networks.blocks.gaussian_encoder.gaussian_kl`, torch's closed form written in
the log-sigmas so that a near-deterministic posterior cannot underflow it into NaN); an L2 penalty on the trained parameters (Kohl et al.), reported
as its own term:

    loss = seg + beta_kl * kl + l2_weight * l2

Why the sum over pixels matters: the KL of the 6-D code is a few nats. Against a per-image Dice
(at most 1) or a per-pixel mean, carrying any information in ``z`` costs more than it can gain, the
posterior collapses onto the prior (KL 0.0000 from the first epoch, measured on lidc-phantom) and
every prior sample decodes to the same mask. Summed over a 64 x 64 image the reconstruction is worth
thousands of nats, as in Kohl et al., and ``z`` is used.

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
from torch import nn
from torch.nn import functional as F

from ..blocks.backbone import BackboneConfig
from ..blocks.gaussian_encoder import AxisAlignedGaussianEncoder, distribution, gaussian_kl
from ..blocks.latent_head import LatentCombiningHead
from ..blocks.sampling import KEEP, fixed_noise
from ..method import MultiRaterMethod
from ..rater_batch import check_multirater_batch, random_present_rater

__all__ = ["ProbabilisticUNet", "build_latent_parts", "pixel_sum_bce"]


def pixel_sum_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy of ``logits`` vs ``target`` summed over each image's pixels, mean over the batch."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1).mean()


def build_latent_parts(
    num_raters: int = 4,
    backbone: BackboneConfig | None = None,
    latent_dim: int = 6,
    prior_channels: Sequence[int] | None = None,
    convs_per_block: int | None = None,
    head_hidden: int = 16,
    head_convs: int = 3,
    out_channels: int = 1,
    posterior_label_channels: int | None = None,
) -> dict[str, nn.Module]:
    """Backbone, prior, posterior and head (built in this order: the initialisation depends on it).

    ``prior_channels``/``convs_per_block`` default to Kohl et al.'s (32, 64, 128, 192) x 3 convolutions
    with ``encoder="resnet34"`` and to (16, 32, 64, 128) x 2 with ``encoder="small"``. The posterior
    sees the image and ``posterior_label_channels`` label channels: 1 (the segmentation it reconstructs,
    Kohl et al.) or, by default, ``num_raters`` (the whole rater stack, D-Persona eq. 1).
    """
    label_channels = num_raters if posterior_label_channels is None else int(posterior_label_channels)
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
            image_channels + label_channels, latent_dim, prior_channels, dims, convs_per_block
        ),
        "head": LatentCombiningHead(backbone.feature_channels, latent_dim, out_channels, head_hidden, head_convs),
    }


class ProbabilisticUNet(MultiRaterMethod):
    """Probabilistic U-Net with random-present-rater training and batched prior sampling.

    Args:
        backbone: feature network ``image -> (B, F, *sp)`` (e.g. :class:`UNetFeatureBackbone`).
        prior: :class:`AxisAlignedGaussianEncoder` on the image.
        posterior: :class:`AxisAlignedGaussianEncoder` on the image + one rater's mask
            (:attr:`posterior_sees_rater_stack` False) or + the rater stack (D-Persona).
        head: :class:`LatentCombiningHead`.
        latent_dim: D (must match the encoders).
        num_raters: R (with a rater-stack posterior, default: its input channels minus the image's).
        num_samples: S, samples returned by ``forward``.
        beta_kl: weight of the KL term.
        l2_weight: weight of the L2 penalty (0 skips computing it).
        seg_loss: loss ``(logits (B, 1, *sp), target (B, 1, *sp)) -> scalar``; default
            :func:`pixel_sum_bce` (Kohl et al.); subclasses change it with :meth:`default_seg_loss`.
        sample_seed: seed of the fixed inference noise, or None for fresh noise at every call.

    Use :meth:`build` to create the whole network from plain arguments (one ``_target_`` in a config).
    """

    output_modes = ("samples",)
    #: the posterior sees the whole rater stack (D-Persona eq. 1) instead of the one mask it reconstructs
    posterior_sees_rater_stack = False

    #: per stage, the sub-modules the L2 term covers (None: every trained parameter)
    l2_modules = None

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
        if num_raters is None:
            if not self.posterior_sees_rater_stack:
                raise ValueError(f"{type(self).__name__} needs num_raters (its posterior sees one rater's mask).")
            num_raters = posterior.in_channels - prior.in_channels
        num_raters = int(num_raters)
        label_channels = num_raters if self.posterior_sees_rater_stack else 1
        if num_raters < 1 or posterior.in_channels != prior.in_channels + label_channels:
            what = f"num_raters ({num_raters})" if self.posterior_sees_rater_stack else "1 (the reconstructed mask)"
            raise ValueError(
                f"posterior in_channels ({posterior.in_channels}) must be image channels ({prior.in_channels}) + {what}."
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
        self._losses = {"seg": seg_loss if seg_loss is not None else self.default_seg_loss()}
        self.sample_seed = sample_seed
        self.random_sampling = sample_seed is None
        self.register_buffer("sample_noise", fixed_noise(num_samples, latent_dim, sample_seed), persistent=False)

    @staticmethod
    def default_seg_loss() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Kohl et al.'s reconstruction term: binary cross entropy summed over pixels, mean over the batch."""
        return pixel_sum_bce

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
                                   head_convs, posterior_label_channels=None if cls.posterior_sees_rater_stack else 1)
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
        """Sum of squares of the current stage's :attr:`l2_modules` (default: every trained parameter;
        0 without computing when ``l2_weight == 0``)."""
        if self.l2_modules is None:
            params = self.parameters_to_train()
        else:
            params = [p for name in self.l2_modules[self.stage - 1] for p in getattr(self, name).parameters()]
        if self.l2_weight == 0 or not params:
            return torch.zeros((), device=self.sample_noise.device)
        return torch.stack([p.pow(2).sum() for p in params]).sum()

    def _latent_terms(
        self, image: torch.Tensor, posterior_label: torch.Tensor, num_prior_samples: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Posterior-sample logits ``(B, 1, *sp)``, ``num_prior_samples`` prior-sample logits
        ``(B, K, *sp)`` (or None) from ONE head call, and the batch-mean ``KL(q || p)``; the posterior
        sees ``image`` and ``posterior_label`` (one rater's mask, or the masked rater stack)."""
        features = self.backbone(image)
        mu_p, log_sigma_p = self.prior.encode(image)
        mu_q, log_sigma_q = self.posterior.encode(torch.cat([image, posterior_label], dim=1))
        codes = [distribution(mu_q, log_sigma_q).rsample().unsqueeze(1)]
        if num_prior_samples > 0:
            codes.append(distribution(mu_p, log_sigma_p).rsample((num_prior_samples,)).transpose(0, 1))  # (B, K, D)
        logits = self.head(features, torch.cat(codes, dim=1))
        kl = gaussian_kl(mu_q, log_sigma_q, mu_p, log_sigma_p).mean()
        return logits[:, :1], (logits[:, 1:] if num_prior_samples > 0 else None), kl

    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "seg", "kl", "l2"}`` for a batch: image ``(B, C, *sp)``, rater stack ``(B, R, *sp)``,
        rater mask ``(B, R)`` bool (None: all present)."""
        label, rater_mask = check_multirater_batch(image, label, rater_mask, self.num_raters)
        target = random_present_rater(label, rater_mask)  # the mask the posterior sees and must reconstruct
        post_logits, _, kl = self._latent_terms(image, target)
        seg = self._losses["seg"](post_logits, target)
        l2 = self.l2_penalty()
        loss = seg + self.beta_kl * kl + self.l2_weight * l2
        return {"loss": loss, "seg": seg, "kl": kl, "l2": l2}
