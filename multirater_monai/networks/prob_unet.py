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

from ..data.errors import MultiRaterDataError
from .backbone import UNetFeatureBackbone
from .gaussian_encoder import AxisAlignedGaussianEncoder
from .latent_head import LatentCombiningHead

__all__ = ["ProbabilisticUNet", "random_present_rater", "build_latent_parts", "check_multirater_batch"]

_KEEP: Any = object()


def random_present_rater(
    label: torch.Tensor, rater_mask: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each sample, the mask of one rater chosen uniformly among the PRESENT ones: ``(B, 1, *sp)``."""
    weights = rater_mask.to(torch.float32)
    if not bool((weights.sum(1) > 0).all()):
        raise MultiRaterDataError(
            "a sample has no annotating rater (rater_mask all False); drop such samples from the datalist."
        )
    index = torch.multinomial(weights.cpu(), 1, generator=generator).to(label.device)  # (B, 1)
    index = index.view(index.shape + (1,) * (label.dim() - 2)).expand(-1, -1, *label.shape[2:])
    return torch.gather(label, 1, index)


def check_multirater_batch(
    image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None, num_raters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (image, rater stack, rater mask) batch; returns the float label and bool mask."""
    if label.dim() != image.dim() or label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:]:
        raise MultiRaterDataError(
            f"rater stack {tuple(label.shape)} does not match image {tuple(image.shape)}: expected "
            "(B, R, *spatial) with the image's batch and spatial size; check the loading transforms."
        )
    if label.shape[1] != num_raters:
        raise MultiRaterDataError(
            f"the batch has {label.shape[1]} rater channels but the network was built for num_raters="
            f"{num_raters}; set num_raters in the config to the datalist's num_raters."
        )
    if rater_mask is None:
        rater_mask = torch.ones(label.shape[:2], dtype=torch.bool, device=label.device)
    rater_mask = torch.as_tensor(rater_mask, device=label.device).to(torch.bool)
    if rater_mask.shape != label.shape[:2]:
        raise MultiRaterDataError(f"rater_mask {tuple(rater_mask.shape)} must be (B, R) = {tuple(label.shape[:2])}.")
    return label.to(image.dtype), rater_mask


def _noise(rows: int, latent_dim: int, seed: int | None, like: torch.Tensor | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    eps = torch.randn(rows, latent_dim, generator=generator)
    return eps if like is None else eps.to(like.device, like.dtype)


def build_latent_parts(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_raters: int = 4,
    encoder: str = "small",
    feature_channels: int = 16,
    backbone_channels: Sequence[int] = (16, 32, 64, 128),
    latent_dim: int = 6,
    prior_channels: Sequence[int] | None = None,
    convs_per_block: int | None = None,
    head_hidden: int = 16,
    head_convs: int = 3,
    out_channels: int = 1,
) -> dict[str, nn.Module]:
    """Backbone, prior, posterior and head from plain arguments.

    ``prior_channels``/``convs_per_block`` default to Kohl et al.'s (32, 64, 128, 192) x 3 convolutions
    with ``encoder="resnet34"`` and to (16, 32, 64, 128) x 2 with ``encoder="small"``.
    """
    if prior_channels is None:
        prior_channels = (32, 64, 128, 192) if encoder == "resnet34" else (16, 32, 64, 128)
    if convs_per_block is None:
        convs_per_block = 3 if encoder == "resnet34" else 2
    return {
        "backbone": UNetFeatureBackbone(
            spatial_dims, in_channels, feature_channels, encoder=encoder, channels=backbone_channels
        ),
        "prior": AxisAlignedGaussianEncoder(in_channels, latent_dim, prior_channels, spatial_dims, convs_per_block),
        "posterior": AxisAlignedGaussianEncoder(
            in_channels + num_raters, latent_dim, prior_channels, spatial_dims, convs_per_block
        ),
        "head": LatentCombiningHead(feature_channels, latent_dim, out_channels, head_hidden, head_convs),
    }


class ProbabilisticUNet(nn.Module):
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

    __jit_unused_properties__ = ["num_samples"]

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
        super().__init__()
        if prior.latent_dim != latent_dim or posterior.latent_dim != latent_dim or head.latent_dim != latent_dim:
            raise ValueError(f"prior, posterior and head must all use latent_dim={latent_dim}.")
        self.backbone = backbone
        self.prior = prior
        self.posterior = posterior
        self.head = head
        self.latent_dim = latent_dim
        self.num_raters = int(num_raters if num_raters is not None else posterior.in_channels - prior.in_channels)
        if self.num_raters < 1 or posterior.in_channels != prior.in_channels + self.num_raters:
            raise ValueError(
                f"posterior in_channels ({posterior.in_channels}) must be image channels ({prior.in_channels}) "
                f"+ num_raters ({self.num_raters})."
            )
        self.beta_kl = float(beta_kl)
        self.l2_weight = float(l2_weight)
        # Losses are kept out of the module tree (a plain dict): they hold no parameters, must not
        # appear in state_dict, and TorchScript then does not try to compile them with forward.
        self._losses = {
            "seg": seg_loss if seg_loss is not None else DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
        }
        self.sample_seed = sample_seed
        self.random_sampling = sample_seed is None
        self.register_buffer("sample_noise", _noise(num_samples, latent_dim, sample_seed), persistent=False)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def build(
        cls,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_raters: int = 4,
        encoder: str = "small",
        feature_channels: int = 16,
        backbone_channels: Sequence[int] = (16, 32, 64, 128),
        latent_dim: int = 6,
        prior_channels: Sequence[int] | None = None,
        convs_per_block: int | None = None,
        head_hidden: int = 16,
        head_convs: int = 3,
        out_channels: int = 1,
        **kwargs: Any,
    ) -> ProbabilisticUNet:
        """The whole network from plain arguments; ``kwargs`` go to the constructor
        (``num_samples``, ``beta_kl``, ``l2_weight``, ``seg_loss``, ``sample_seed``)."""
        parts = build_latent_parts(
            spatial_dims, in_channels, num_raters, encoder, feature_channels, backbone_channels, latent_dim,
            prior_channels, convs_per_block, head_hidden, head_convs, out_channels,
        )
        return cls(**parts, latent_dim=latent_dim, num_raters=num_raters, **kwargs)

    @property
    def num_samples(self) -> int:
        return int(self.sample_noise.shape[0])

    def set_sampling(self, num_samples: int | None = None, sample_seed: Any = _KEEP) -> None:
        """Change the number of inference samples and/or the seed (None: fresh noise every call)."""
        if sample_seed is not _KEEP:
            self.sample_seed = sample_seed
            self.random_sampling = sample_seed is None
        rows = self.num_samples if num_samples is None else int(num_samples)
        self.sample_noise = _noise(rows, self.latent_dim, self.sample_seed, like=self.sample_noise)

    def parameters_to_train(self) -> list[nn.Parameter]:
        """Parameters the optimizer should update."""
        return [p for p in self.parameters() if p.requires_grad]

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
