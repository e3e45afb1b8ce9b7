"""Pionono (Schmidt et al., ICCV 2023): one learnable Gaussian per rater in a latent space shared by all raters.

"Probabilistic Modeling of Inter- and Intra-observer Variability in Medical Image Segmentation".
A U-Net backbone gives a feature map of the image; every rater r has a Gaussian over a D-dimensional
code (D = 8)::

    q(z | r) = N(mu_r, diag(sigma_r^2)),        prior p(z) = N(0, prior_sigma^2 I)   (prior_sigma = 2)

``mu_r`` and ``log sigma_r`` are plain learnable parameters (not predicted from the image): the rater's
style is a property of the rater (inter-observer variability, the spread between the ``mu_r``), and
``sigma_r`` the rater's own inconsistency (intra-observer variability). A code ``z`` is tiled over the
image, concatenated with the features and decoded by a 3-layer 1x1 convolutional head (hidden 32, 32,
ReLU; :class:`~multirater_monai.networks.blocks.LatentCombiningHead`, the "fcomb" of the Prob U-Net)
into the mask logits.

Initialisation: ``mu_r ~ U(-init_mean_spread / 2, init_mean_spread / 2)`` per dimension (spread 8:
U(-4, 4), i.e. standard deviation 2.3, about the prior's 2), so the raters start apart and do not need
to break a symmetry; ``log sigma_r = log(initial_sigma)`` (0.1: small, the codes of a rater start close
to its mean).

Loss (:meth:`Pionono.training_objective`; terms ``loss, seg, kl, l2``)::

    loss = seg + kl_weight * kl + l2_weight * l2

* ``seg``: for every PRESENT (image, rater) pair, ``num_mc_samples`` (5) codes ``z = mu_r + sigma_r * eps``
  (reparameterisation: the gradient reaches ``mu_r`` and ``sigma_r``) are decoded and scored against
  that rater's mask, averaged over the codes and the present pairs. ``seg_loss``: ``"ce"`` (default;
  the pixel-wise binary cross entropy, mean over pixels: the negative log-likelihood of Pionono's ELBO),
  ``"dice"`` (soft Dice per image) or ``"ce+dice"``. Absent raters (``rater_mask`` False) take no part.
* ``kl``: ``KL(q(z | r) || p(z))`` in closed form, summed over the D dimensions, mean over the raters
  (all raters: the Gaussians are global parameters, not per image); weight ``kl_weight`` (5e-4).
* ``l2``: the sum of squares of the network's weights (backbone and head, not the rater Gaussians,
  which the KL regularises); weight ``l2_weight``.

The rater Gaussians learn faster than the network: :meth:`Pionono.parameter_groups` gives the
optimiser two groups, the network at ``learning_rate`` and ``(mu, log sigma)`` at ``latent_learning_rate``.

Inference ``forward(image)`` returns logits ``(B, C, *sp)`` by ``output_mode``:

* ``"personalized"`` (default; training and validation): R outputs, rater r's code ``z = mu_r`` (the
  posterior mean);
* ``"samples"``: S samples of the mixture ``(1/R) sum_r q(z | r)``: a rater chosen uniformly, then ``z``
  drawn from its Gaussian;
* ``"personalized+samples"``: both, personalized first (one backbone pass; what inference writes).

The S (rater, noise) draws are fixed buffers drawn from ``sample_seed`` (reproducible inference, and a
TorchScript export reproduces them); ``sample_seed=None`` draws fresh ones at every call
(:meth:`Pionono.set_sampling` changes S or the seed; the buffers are not saved in checkpoints).

``shared_latent=True`` builds the rater-blind control: ONE Gaussian used for every rater (the same
network, trained on every rater's mask without knowing whose it is).

One structure (a binary task), as the Prob U-Net bundle; TorchScript: ``torch.jit.script`` works with
``encoder="small"``, ``torch.jit.trace`` with both encoders.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...utils.errors import MultiRaterDataError
from ..blocks.backbone import BackboneConfig
from ..blocks.latent_head import LatentCombiningHead
from ..blocks.sampling import KEEP, fixed_noise
from ..method import MultiRaterMethod
from ..rater_batch import check_multirater_batch

__all__ = ["Pionono", "PIONONO_OUTPUT_MODES", "PIONONO_SEG_LOSSES", "gaussian_kl_to_isotropic"]

PIONONO_OUTPUT_MODES = ("personalized", "samples", "personalized+samples")
PIONONO_SEG_LOSSES = ("ce", "dice", "ce+dice")


def gaussian_kl_to_isotropic(mu: torch.Tensor, log_sigma: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    """``KL(N(mu, diag(sigma^2)) || N(0, prior_sigma^2 I))`` summed over the last axis (closed form)."""
    variance_ratio = torch.exp(2 * log_sigma) / prior_sigma**2
    per_dim = 0.5 * (variance_ratio + mu.pow(2) / prior_sigma**2 - 1.0 - torch.log(variance_ratio))
    return per_dim.sum(-1)


def _rater_draw(rows: int, num_raters: int, seed: int | None) -> torch.Tensor:
    """``(rows,)`` raters drawn uniformly, from ``seed`` (a stream apart from the code noise's)."""
    generator = torch.Generator().manual_seed(int(seed) + 1) if seed is not None else None
    return torch.randint(0, num_raters, (rows,), generator=generator)


class Pionono(MultiRaterMethod):
    """Pionono network; see the module docstring.

    Args:
        backbone: feature network ``image -> (B, feature_channels, *sp)``.
        head: :class:`LatentCombiningHead` (``latent_dim`` codes, one output channel).
        num_raters: R.
        latent_dim: D (paper: 8).
        num_samples: S, mixture samples in the ``samples`` modes.
        prior_sigma: standard deviation of the prior ``N(0, prior_sigma^2 I)`` (paper: 2).
        init_mean_spread: the rater means start uniform in ``[-spread / 2, spread / 2]`` (paper: 8).
        initial_sigma: the rater sigmas' initial value (small).
        num_mc_samples: codes per (image, rater) pair in the loss (Monte Carlo estimate of the likelihood).
        kl_weight: weight of the KL term (paper: 5e-4).
        l2_weight: weight of the L2 penalty on the backbone and head weights (0 skips it).
        seg_loss: ``"ce"``, ``"dice"`` or ``"ce+dice"``.
        shared_latent: one Gaussian for every rater (the rater-blind control).
        output_mode: one of :data:`PIONONO_OUTPUT_MODES`.
        sample_seed: seed of the fixed mixture draws (None: fresh draws at every call).
    """

    output_modes = PIONONO_OUTPUT_MODES

    def __init__(
        self,
        backbone: nn.Module,
        head: LatentCombiningHead,
        num_raters: int,
        latent_dim: int = 8,
        num_samples: int = 16,
        prior_sigma: float = 2.0,
        init_mean_spread: float = 8.0,
        initial_sigma: float = 0.1,
        num_mc_samples: int = 5,
        kl_weight: float = 5e-4,
        l2_weight: float = 1e-5,
        seg_loss: str = "ce",
        shared_latent: bool = False,
        output_mode: str = "personalized",
        sample_seed: int | None = 0,
    ) -> None:
        super().__init__(num_raters)
        if head.latent_dim != latent_dim or head.out_channels != 1:
            raise ValueError(f"head must take latent_dim={latent_dim} codes and give 1 channel.")
        if seg_loss not in PIONONO_SEG_LOSSES:
            raise ValueError(f"seg_loss must be one of {PIONONO_SEG_LOSSES}, got {seg_loss!r}.")
        if float(prior_sigma) <= 0 or float(initial_sigma) <= 0 or int(num_mc_samples) < 1:
            raise ValueError("prior_sigma and initial_sigma must be > 0 and num_mc_samples >= 1.")
        if float(kl_weight) < 0 or float(l2_weight) < 0:
            raise ValueError(f"kl_weight and l2_weight must be >= 0, got {kl_weight} and {l2_weight}.")
        self.backbone = backbone
        self.head = head
        self.latent_dim = int(latent_dim)
        self.prior_sigma = float(prior_sigma)
        self.num_mc_samples = int(num_mc_samples)
        self.kl_weight = float(kl_weight)
        self.l2_weight = float(l2_weight)
        self.seg_loss = seg_loss
        self.shared_latent = bool(shared_latent)
        rows = 1 if self.shared_latent else self.num_raters
        spread = float(init_mean_spread)
        self.latent_mean = nn.Parameter(torch.rand(rows, self.latent_dim) * spread - spread / 2)
        self.latent_log_sigma = nn.Parameter(torch.full((rows, self.latent_dim), math.log(float(initial_sigma))))
        # rater r -> row of the Gaussians (all 0 with a shared latent)
        self.register_buffer("rater_rows", torch.arange(self.num_raters) % rows, persistent=False)
        self.sample_seed = sample_seed
        self.random_sampling = sample_seed is None
        self.register_buffer("sample_noise", fixed_noise(num_samples, self.latent_dim, sample_seed), persistent=False)
        self.register_buffer("sample_raters", _rater_draw(num_samples, self.num_raters, sample_seed), persistent=False)
        self.set_output_mode(output_mode)

    @classmethod
    def build(
        cls,
        num_raters: int = 4,
        backbone: BackboneConfig | None = None,
        latent_dim: int = 8,
        head_hidden: int = 32,
        head_convs: int = 3,
        **kwargs: Any,
    ) -> Pionono:
        """The whole network from plain arguments; ``kwargs`` go to the constructor (``num_samples``,
        ``prior_sigma``, ``kl_weight``, ``seg_loss``, ``output_mode``, ...)."""
        config = backbone or BackboneConfig()
        head = LatentCombiningHead(config.feature_channels, latent_dim, 1, head_hidden, head_convs)
        return cls(config.build(), head, num_raters, latent_dim=latent_dim, **kwargs)

    # ------------------------------------------------------------------ settings
    @property
    def num_samples(self) -> int:
        return int(self.sample_noise.shape[0])

    def output_groups(self) -> dict[str, int]:
        if self.output_mode == "personalized":
            return {"personalized": self.num_raters}
        if self.output_mode == "samples":
            return {"samples": self.num_samples}
        return {"personalized": self.num_raters, "samples": self.num_samples}

    @torch.jit.unused
    def set_sampling(self, num_samples: int | None = None, sample_seed: Any = KEEP) -> None:
        """Change S and/or the seed of the mixture draws (None: fresh draws at every call)."""
        if sample_seed is not KEEP:
            self.sample_seed = sample_seed
            self.random_sampling = sample_seed is None
        rows = self.num_samples if num_samples is None else int(num_samples)
        self.sample_noise = fixed_noise(rows, self.latent_dim, self.sample_seed, like=self.sample_noise)
        self.sample_raters = _rater_draw(rows, self.num_raters, self.sample_seed).to(self.sample_raters.device)

    @torch.jit.unused
    def parameter_groups(self, learning_rate: float, latent_learning_rate: float | None = None) -> list[dict]:
        """Two optimiser groups: the network (backbone, head) at ``learning_rate`` and the rater Gaussians
        ``(mu, log sigma)`` at ``latent_learning_rate`` (default: ``learning_rate``); trained parameters only."""
        latent = [self.latent_mean, self.latent_log_sigma]
        latent_ids = {id(p) for p in latent}
        network = [p for p in self.parameters_to_train() if id(p) not in latent_ids]
        latent_lr = learning_rate if latent_learning_rate is None else latent_learning_rate
        return [
            {"params": network, "lr": float(learning_rate)},
            {"params": [p for p in latent if p.requires_grad], "lr": float(latent_lr), "weight_decay": 0.0},
        ]

    # ------------------------------------------------------------------ the model
    def rater_means(self) -> torch.Tensor:
        """``(R, D)``: mu_r for every rater (the same row for every rater with a shared latent)."""
        return self.latent_mean[self.rater_rows]

    def rater_sigmas(self) -> torch.Tensor:
        """``(R, D)``: sigma_r for every rater."""
        return torch.exp(self.latent_log_sigma[self.rater_rows])

    def _mixture_codes(self) -> torch.Tensor:
        """``(S, D)`` mixture draws: rater ``sample_raters[s]``, code ``mu + sigma * sample_noise[s]``."""
        raters = self.sample_raters
        noise = self.sample_noise
        if self.random_sampling:
            raters = torch.randint(0, self.num_raters, raters.shape, device=raters.device)
            noise = torch.randn_like(noise)
        return self.rater_means()[raters] + self.rater_sigmas()[raters] * noise

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image)
        if self.output_mode == "personalized":
            codes = self.rater_means()
        elif self.output_mode == "samples":
            codes = self._mixture_codes()
        else:
            codes = torch.cat([self.rater_means(), self._mixture_codes()], dim=0)
        return self.head(features, codes.unsqueeze(0).expand(image.shape[0], -1, -1))  # one batched head call

    # ------------------------------------------------------------------ training
    def kl_divergence(self) -> torch.Tensor:
        """``KL(q(z | r) || p(z))`` per Gaussian, summed over D: ``(R,)`` (``(1,)`` with a shared latent)."""
        return gaussian_kl_to_isotropic(self.latent_mean, self.latent_log_sigma, self.prior_sigma)

    def l2_penalty(self) -> torch.Tensor:
        """Sum of squares of the trained network weights (the rater Gaussians excluded)."""
        latent_ids = {id(self.latent_mean), id(self.latent_log_sigma)}
        params = [p for p in self.parameters_to_train() if id(p) not in latent_ids]
        if self.l2_weight == 0 or not params:
            return torch.zeros((), device=self.latent_mean.device)
        return torch.stack([p.pow(2).sum() for p in params]).sum()

    def _pair_losses(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(B, M, R)`` segmentation loss of each code's logits ``(B, M, R, *sp)`` vs ``target`` ``(B, 1, R, *sp)``."""
        target = target.expand_as(logits)
        losses = []
        if self.seg_loss in ("ce", "ce+dice"):
            losses.append(F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(3).mean(3))
        if self.seg_loss in ("dice", "ce+dice"):
            prob = torch.sigmoid(logits).flatten(3)
            flat = target.flatten(3)
            dice = (2 * (prob * flat).sum(3) + 1.0) / (prob.sum(3) + flat.sum(3) + 1.0)
            losses.append(1.0 - dice)
        return losses[0] if len(losses) == 1 else losses[0] + losses[1]

    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "seg", "kl", "l2"}``: image ``(B, C, *sp)``, rater stack ``(B, R, *sp)``, rater mask
        ``(B, R)`` bool (None: all present)."""
        label, rater_mask = check_multirater_batch(image, label, rater_mask, self.num_raters)
        if not bool(rater_mask.any()):
            raise MultiRaterDataError(
                "no rater annotated any sample of the batch (rater_mask all False); "
                "drop such samples from the datalist."
            )
        b, m, r, d = image.shape[0], self.num_mc_samples, self.num_raters, self.latent_dim
        features = self.backbone(image)
        noise = torch.randn(m, r, d, device=image.device, dtype=image.dtype)
        codes = (self.rater_means() + self.rater_sigmas() * noise).reshape(m * r, d)  # reparameterised
        logits = self.head(features, codes.unsqueeze(0).expand(b, -1, -1))  # (B, M * R, *sp)
        logits = logits.reshape([b, m, r] + list(logits.shape[2:]))
        per_pair = self._pair_losses(logits, label.unsqueeze(1)).mean(1)  # (B, R), mean over the codes
        weights = rater_mask.to(per_pair.dtype)
        seg = (per_pair * weights).sum() / weights.sum()
        kl = self.kl_divergence().mean()
        l2 = self.l2_penalty()
        loss = seg + self.kl_weight * kl + self.l2_weight * l2
        return {"loss": loss, "seg": seg, "kl": kl, "l2": l2}
