"""PADL (Liao et al.): preference-involved annotation distribution learning.

The AVAP paper (seed 003) describes PADL as a multi-head network that "treats the annotation bias as
the combination of annotator's preference and stochastic errors". Here: a shared encoder-decoder (the
:class:`~multirater_monai.networks.blocks.UNetFeatureBackbone`), and per pixel

* a global head: a Gaussian over the consensus logit, ``N(mu, sigma^2)`` (the stochastic error that
  every annotation carries);
* R rater heads, each a residual on the global one: ``mu_r = mu + delta_mu_r`` and
  ``sigma_r = softplus(s + delta_s_r)`` where ``sigma = softplus(s)`` (rater r's preference shifts
  the logit and its own error spread).

Both heads are 1x1 convolutions of the features (2 channels, and 2R). Samples are drawn with the
reparameterisation trick (:func:`~multirater_monai.networks.blocks.logit_gaussian.sample_logit_gaussian`,
diagonal: no factors).

Several structures (K, e.g. lesion + core; the rater stack ``(B, K * R, H, W)`` structure-major, DESIGN.md):
each structure has its own global Gaussian and its own R residual rater Gaussians, from the same shared
features: the global head gives 2K channels (``mu_1 .. mu_K``, then ``s_1 .. s_K``), the rater heads 2KR
(``delta_mu`` structure-major, then ``delta_s``). With K = 1 these are the one-structure heads (the
shipped weights load unchanged).

Loss (:meth:`PADL.training_objective`; terms ``loss, global, rater``)::

    loss = global + rater

* ``global``: binary cross entropy (mean over pixels) of a sample of the global Gaussian against each
  present rater's mask, mean over the present (image, rater) pairs;
* ``rater``: the cross entropy of a sample of rater r's Gaussian against rater r's mask, same mean.
  Absent raters (``rater_mask`` False) take no part. ``num_mc_samples`` draws (1 by default), averaged.
* with K structures both terms are computed per structure (structure k's Gaussians against structure k's
  present raters; ``rater_mask`` ``(B, R)`` or ``(B, K * R)``) and SUMMED over the structures: each
  structure's term is exactly a one-structure PADL's, so a structure's gradient does not shrink as K grows
  (Adam's steps do not depend on the loss's overall scale); a structure no rater annotated in the batch adds 0.

Inference ``forward(image)``, by ``output_mode``: ``"personalized"`` (default; the R means ``mu_r``, K * R
structure-major), ``"samples"`` (S draws of the global Gaussian, fixed noise from ``sample_seed``; K * S,
structure k's S draws together, draw s of every structure with the same noise ``s``), ``"consensus"`` (the
global mean ``mu``, one per structure), ``"personalized+consensus+samples"`` (inference). :meth:`split_outputs` adds
``calibrated``: the global mean's probability where the mode has it, else the mean of the personalized
probabilities. 2D only; scriptable with ``encoder="small"``.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn

from ...utils.errors import MultiRaterDataError
from ..blocks.backbone import BackboneConfig
from ..blocks.logit_gaussian import logit_scale, sample_logit_gaussian, tiled_pixel_noise
from ..blocks.sampling import KEEP, fixed_noise
from ..consensus_loss import structure_terms
from ..consensus_method import ConsensusRaterMethod
from ..rater_batch import check_structured_batch

__all__ = ["PADL", "PADL_OUTPUT_MODES"]

PADL_OUTPUT_MODES = ("personalized", "samples", "consensus", "personalized+consensus+samples")


class PADL(ConsensusRaterMethod):
    """PADL network; see the module docstring.

    Args:
        backbone: feature network ``image -> (B, feature_channels, H, W)``.
        feature_channels: F.
        num_raters: R.
        num_structures: K; each structure has its own global and rater Gaussians.
        rater_weight: weight of the per-rater term (the issue's loss: 1).
        num_mc_samples: reparameterised draws per Gaussian in the loss.
        num_samples: S, global draws in the ``samples`` modes.
        output_mode: one of :data:`PADL_OUTPUT_MODES`.
        sample_seed: seed of the fixed inference noise (None: fresh noise at every call).
        noise_tile: side of the fixed pixel-noise tile.
    """

    output_modes = PADL_OUTPUT_MODES

    def __init__(
        self,
        backbone: nn.Module,
        feature_channels: int,
        num_raters: int,
        rater_weight: float = 1.0,
        num_mc_samples: int = 1,
        num_samples: int = 16,
        output_mode: str = "personalized",
        sample_seed: int | None = 0,
        noise_tile: int = 128,
        num_structures: int = 1,
    ) -> None:
        super().__init__(num_raters, num_structures)
        if int(num_mc_samples) < 1 or int(noise_tile) < 1:
            raise ValueError("num_mc_samples and noise_tile must be >= 1.")
        if float(rater_weight) < 0:
            raise ValueError(f"rater_weight must be >= 0, got {rater_weight}.")
        self.backbone = backbone
        conv = Conv[Conv.CONV, 2]
        k, r = self.num_structures, self.num_raters
        self.global_head = conv(feature_channels, 2 * k, kernel_size=1)  # mu_1..mu_K, s_1..s_K
        self.rater_heads = conv(feature_channels, 2 * k * r, kernel_size=1)  # delta mu (K * R), delta s (K * R)
        self.rater_weight, self.num_mc_samples = float(rater_weight), int(num_mc_samples)
        self.sample_seed = sample_seed
        self.random_sampling = sample_seed is None
        self.noise_tile = int(noise_tile)
        self.register_buffer("pixel_noise", self._fixed_pixel_noise(num_samples), persistent=False)
        self.set_output_mode(output_mode)

    @classmethod
    def build(cls, num_raters: int = 4, backbone: BackboneConfig | None = None, num_structures: int = 1,
              **kwargs: Any) -> PADL:
        """The whole network from plain arguments; ``kwargs`` go to the constructor."""
        config = backbone or BackboneConfig()
        if config.spatial_dims != 2:
            raise ValueError("PADL is 2D (the bundles run volumes slice by slice); set backbone spatial_dims to 2.")
        return cls(config.build(), config.feature_channels, num_raters, num_structures=num_structures, **kwargs)

    @torch.jit.unused
    def _fixed_pixel_noise(self, rows: int) -> torch.Tensor:
        flat = fixed_noise(rows, self.noise_tile * self.noise_tile, self.sample_seed)
        return flat.reshape(rows, self.noise_tile, self.noise_tile)

    # ------------------------------------------------------------------ settings
    @property
    def num_samples(self) -> int:
        return int(self.pixel_noise.shape[0])

    @torch.jit.unused
    def set_sampling(self, num_samples: int | None = None, sample_seed: Any = KEEP) -> None:
        """Change S and/or the seed of the fixed inference noise (None: fresh noise at every call)."""
        if sample_seed is not KEEP:
            self.sample_seed = sample_seed
            self.random_sampling = sample_seed is None
        rows = self.num_samples if num_samples is None else int(num_samples)
        self.pixel_noise = self._fixed_pixel_noise(rows).to(self.pixel_noise.device, self.pixel_noise.dtype)

    # ------------------------------------------------------------------ the model
    def gaussians(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and sigmas ``(B, K (1 + R), H, W)``: per structure k a block of 1 + R channels, the global
        Gaussian first, then rater r's (with K = 1: channel 0 the global one, channel 1 + r rater r's)."""
        b, k, r = features.shape[0], self.num_structures, self.num_raters
        h, w = features.shape[-2], features.shape[-1]
        mu, s = self.global_head(features).split(k, dim=1)
        delta_mu, delta_s = self.rater_heads(features).split(k * r, dim=1)
        mu, s = mu.reshape(b, k, 1, h, w), s.reshape(b, k, 1, h, w)
        mean = torch.cat([mu, mu + delta_mu.reshape(b, k, r, h, w)], dim=2).reshape(b, k * (1 + r), h, w)
        scale = torch.cat([s, s + delta_s.reshape(b, k, r, h, w)], dim=2).reshape(b, k * (1 + r), h, w)
        return mean, logit_scale(scale)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean, sigma = self.gaussians(self.backbone(image))
        b, k, q, h, w = mean.shape[0], self.num_structures, self.num_raters + 1, mean.shape[-2], mean.shape[-1]
        mean, sigma = mean.reshape(b, k, q, h, w), sigma.reshape(b, k, q, h, w)
        parts: list[torch.Tensor] = []
        if "personalized" in self.output_mode:
            parts.append(mean[:, :, 1:].reshape(b, k * self.num_raters, h, w))
        if "consensus" in self.output_mode:
            parts.append(mean[:, :, 0])
        if "samples" in self.output_mode:
            noise = tiled_pixel_noise(self.pixel_noise, h, w)
            if self.random_sampling:
                noise = torch.randn_like(noise)
            # (B, K, 1, H, W) against (S, H, W) noise: (B, K, S, H, W), structure-major
            samples = sample_logit_gaussian(mean[:, :, :1], sigma[:, :, :1], noise)
            parts.append(samples.reshape(b, k * samples.shape[2], h, w))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ training
    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "global", "rater"}``: image ``(B, C, H, W)``, rater stack ``(B, K * R, H, W)``
        (structure-major), rater mask ``(B, R)`` or ``(B, K * R)`` bool (None: all present)."""
        label, rater_mask = check_structured_batch(image, label, rater_mask, self.num_raters, self.num_structures)
        if not bool(rater_mask.any()):
            raise MultiRaterDataError(
                "no rater annotated any sample of the batch (rater_mask all False); drop such samples from the datalist."
            )
        mean, sigma = self.gaussians(self.backbone(image))
        m = self.num_mc_samples
        noise = torch.randn(mean.shape[0], m, *mean.shape[1:], device=mean.device, dtype=mean.dtype)
        samples = sample_logit_gaussian(mean.unsqueeze(1), sigma.unsqueeze(1), noise)  # (B, M, K (1 + R), H, W)
        global_term, rater = structure_terms(samples, label, rater_mask, self.num_structures)
        return {"loss": global_term + self.rater_weight * rater, "global": global_term, "rater": rater}
