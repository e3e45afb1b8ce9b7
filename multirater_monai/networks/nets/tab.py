"""TAB (Liao et al., MICCAI 2023): Transformer-based Annotation Bias-aware segmentation.

"Transformer-based annotation bias-aware medical image segmentation": a CNN encoder, then a
transformer decoder with R + 1 learned queries, one for the consensus and one per rater. Each query's
output embedding becomes a mask head that predicts a Gaussian over the mask LOGITS with a low-rank
covariance (the stochastic-segmentation idea: pixels vary together), sampled with the
reparameterisation trick. The rater queries model each annotator's bias, the consensus query what
the raters share.

Several structures (K, e.g. lesion + core; the rater stack ``(B, K * R, H, W)`` structure-major, DESIGN.md):
each structure has its own consensus query and its own R rater queries, K * (R + 1) queries in all, in
blocks of R + 1 (block k: structure k's consensus, then its raters). The queries of all structures attend
to each other in the decoder (the structures' masks are related: a core lies inside its lesion) and share
the mask-embedding layer; each query still has its own Gaussian. With K = 1 the network, its parameters
and its outputs are those of the one-structure TAB (the shipped weights load unchanged).

Here:

* the CNN is the shared :class:`~multirater_monai.networks.blocks.UNetFeatureBackbone` (per-pixel
  features ``(B, F, H, W)``);
* the decoder's memory: the feature map average-pooled to ``token_grid x token_grid`` tokens, projected
  to ``embed_dim`` with a learned position embedding (attention over 64 tokens instead of every pixel:
  cheap on a CPU, and the queries need the image's layout, not its pixels);
* ``torch.nn.TransformerDecoder`` (``num_layers`` layers, ``num_heads`` heads, no dropout): the R + 1
  queries attend to each other and to the memory;
* mask heads: a linear layer turns each query embedding into ``2 + rank`` mask embeddings (mean,
  scale, ``rank`` factors) of ``embed_dim + 1`` numbers; their dot product with the per-pixel embedding
  (a 1x1 projection of the features, plus a constant channel: each mask embedding carries its own bias)
  gives per pixel the mean ``mu_q``, ``sigma_q = softplus(.)`` and the factor maps ``U_q`` of the
  query's logit Gaussian ``N(mu_q, diag(sigma_q^2) + U_q^T U_q)``
  (:func:`~multirater_monai.networks.blocks.logit_gaussian.sample_logit_gaussian`). ``rank`` defaults
  to R + 1.

Loss (:meth:`TAB.training_objective`; terms ``loss, consensus, rater``)::

    loss = consensus + rater_weight * rater

* ``consensus``: binary cross entropy (mean over pixels) of the consensus query's sample against EVERY
  present rater's mask, mean over the present (image, rater) pairs;
* ``rater``: the cross entropy of rater r's sample against rater r's mask, mean over the present pairs
  (an absent rater, ``rater_mask`` False, takes no part in either term);
* ``num_mc_samples`` reparameterised draws per query (1 by default), averaged;
* with K structures both terms are computed per structure (structure k's queries against structure k's
  present raters; ``rater_mask`` ``(B, R)`` or ``(B, K * R)``) and SUMMED over the structures: each
  structure's term is exactly a one-structure TAB's, so a structure's gradient does not shrink as K grows
  (Adam's steps do not depend on the loss's overall scale, so the sum does not call for another learning
  rate); a structure no rater annotated in the batch adds 0.

Inference ``forward(image)``, by ``output_mode``:

* ``"personalized"`` (default; training and validation): the R rater queries' means ``mu_r`` (K * R);
* ``"samples"``: S draws from the consensus query's Gaussian (K * S, structure-major: structure k's S draws
  together; draw s of every structure uses the same noise ``s``);
* ``"consensus"``: the consensus mean ``mu_0`` (one channel per structure);
* ``"personalized+consensus+samples"`` (inference): all three, in that order, one backbone pass.

:meth:`split_outputs` adds ``calibrated``: the consensus mean's probability where the mode has it, else
the mean of the R personalized probabilities. The S draws use fixed noise buffers drawn from
``sample_seed`` (``None``: fresh noise at every call; :meth:`TAB.set_sampling`). 2D only (the bundles
run volumes slice by slice); scriptable with ``encoder="small"``.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn
from torch.nn import functional as F

from ...utils.errors import MultiRaterDataError
from ..blocks.backbone import BackboneConfig
from ..blocks.logit_gaussian import logit_scale, sample_logit_gaussian, tiled_pixel_noise
from ..blocks.sampling import KEEP, fixed_noise
from ..consensus_loss import structure_terms
from ..consensus_method import ConsensusRaterMethod
from ..rater_batch import check_structured_batch

__all__ = ["TAB", "TAB_OUTPUT_MODES"]

TAB_OUTPUT_MODES = ("personalized", "samples", "consensus", "personalized+consensus+samples")


def _pixel_noise(rows: int, tile: int, seed: int | None, like: torch.Tensor | None = None) -> torch.Tensor:
    """``(rows, tile, tile)`` fixed pixel noise; a seed stream apart from the factor noise's."""
    flat = fixed_noise(rows, tile * tile, None if seed is None else int(seed) + 1, like=like)
    return flat.reshape(rows, tile, tile)


class TAB(ConsensusRaterMethod):
    """TAB network; see the module docstring.

    Args:
        backbone: feature network ``image -> (B, feature_channels, H, W)``.
        feature_channels: F.
        num_raters: R.
        num_structures: K; each structure has its own consensus and rater queries.
        embed_dim: width of the queries, the memory tokens and the mask embeddings.
        num_heads, num_layers: the transformer decoder's.
        token_grid: the memory is the feature map pooled to ``token_grid x token_grid`` tokens.
        rank: rank of each query's covariance factor (None: R + 1).
        rater_weight: lambda, the weight of the per-rater term.
        num_mc_samples: reparameterised draws per query in the loss.
        num_samples: S, consensus draws in the ``samples`` modes.
        output_mode: one of :data:`TAB_OUTPUT_MODES`.
        sample_seed: seed of the fixed inference noise (None: fresh noise at every call).
        noise_tile: side of the fixed pixel-noise tile.
    """

    output_modes = TAB_OUTPUT_MODES

    def __init__(
        self,
        backbone: nn.Module,
        feature_channels: int,
        num_raters: int,
        embed_dim: int = 32,
        num_heads: int = 4,
        num_layers: int = 2,
        token_grid: int = 8,
        rank: int | None = None,
        rater_weight: float = 1.0,
        num_mc_samples: int = 1,
        num_samples: int = 16,
        output_mode: str = "personalized",
        sample_seed: int | None = 0,
        noise_tile: int = 128,
        num_structures: int = 1,
    ) -> None:
        super().__init__(num_raters, num_structures)
        rank = self.num_raters + 1 if rank is None else int(rank)
        if rank < 1 or int(num_mc_samples) < 1 or int(token_grid) < 1 or int(noise_tile) < 1:
            raise ValueError("rank, num_mc_samples, token_grid and noise_tile must be >= 1.")
        if float(rater_weight) < 0:
            raise ValueError(f"rater_weight must be >= 0, got {rater_weight}.")
        if int(embed_dim) % int(num_heads):
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads}).")
        self.backbone = backbone
        self.embed_dim, self.rank, self.token_grid = int(embed_dim), rank, int(token_grid)
        self.rater_weight, self.num_mc_samples = float(rater_weight), int(num_mc_samples)
        # per structure k a block of R + 1 queries: k (R + 1) its consensus, k (R + 1) + 1 + r its rater r
        self.num_queries = self.num_structures * (self.num_raters + 1)
        conv = Conv[Conv.CONV, 2]
        self.memory_projection = conv(feature_channels, self.embed_dim, kernel_size=1)
        self.memory_position = nn.Parameter(0.02 * torch.randn(self.token_grid * self.token_grid, self.embed_dim))
        self.queries = nn.Parameter(torch.randn(self.num_queries, self.embed_dim))
        layer = nn.TransformerDecoderLayer(self.embed_dim, int(num_heads), 2 * self.embed_dim, dropout=0.0,
                                           batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, int(num_layers))
        self.pixel_projection = conv(feature_channels, self.embed_dim, kernel_size=1)
        # per query: (2 + rank) mask embeddings of embed_dim + 1 (the last one multiplies the constant channel)
        self.mask_embeddings = nn.Linear(self.embed_dim, (2 + rank) * (self.embed_dim + 1))
        self.sample_seed = sample_seed
        self.random_sampling = sample_seed is None
        self.noise_tile = int(noise_tile)
        self.register_buffer("factor_noise", fixed_noise(num_samples, rank, sample_seed), persistent=False)
        self.register_buffer("pixel_noise", _pixel_noise(num_samples, self.noise_tile, sample_seed), persistent=False)
        self.set_output_mode(output_mode)

    @classmethod
    def build(cls, num_raters: int = 4, backbone: BackboneConfig | None = None, num_structures: int = 1,
              **kwargs: Any) -> TAB:
        """The whole network from plain arguments; ``kwargs`` go to the constructor."""
        config = backbone or BackboneConfig()
        if config.spatial_dims != 2:
            raise ValueError("TAB is 2D (the bundles run volumes slice by slice); set backbone spatial_dims to 2.")
        return cls(config.build(), config.feature_channels, num_raters, num_structures=num_structures, **kwargs)

    # ------------------------------------------------------------------ settings
    @property
    def num_samples(self) -> int:
        return int(self.factor_noise.shape[0])

    @torch.jit.unused
    def set_sampling(self, num_samples: int | None = None, sample_seed: Any = KEEP) -> None:
        """Change S and/or the seed of the fixed inference noise (None: fresh noise at every call)."""
        if sample_seed is not KEEP:
            self.sample_seed = sample_seed
            self.random_sampling = sample_seed is None
        rows = self.num_samples if num_samples is None else int(num_samples)
        self.factor_noise = fixed_noise(rows, self.rank, self.sample_seed, like=self.factor_noise)
        self.pixel_noise = _pixel_noise(rows, self.noise_tile, self.sample_seed, like=self.pixel_noise)

    # ------------------------------------------------------------------ the model
    def query_gaussians(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per query its logit Gaussian: mean ``(B, Q, H, W)``, sigma ``(B, Q, H, W)``, factors ``(B, Q, rank, H, W)``;
        ``Q = K (R + 1)``, in blocks of R + 1 per structure (consensus first)."""
        b = features.shape[0]
        tokens = F.adaptive_avg_pool2d(self.memory_projection(features), self.token_grid)
        memory = tokens.flatten(2).transpose(1, 2) + self.memory_position  # (B, G*G, E)
        queries = self.decoder(self.queries.unsqueeze(0).expand(b, -1, -1), memory)  # (B, Q, E)
        embeddings = self.mask_embeddings(queries).reshape(b, self.num_queries, 2 + self.rank, self.embed_dim + 1)
        pixels = self.pixel_projection(features)
        pixels = torch.cat([pixels, torch.ones_like(pixels[:, :1])], dim=1)  # (B, E + 1, H, W)
        maps = torch.einsum("bqme,behw->bqmhw", embeddings, pixels)
        return maps[:, :, 0], logit_scale(maps[:, :, 1]), maps[:, :, 2:]

    def _consensus_samples(self, mean: torch.Tensor, sigma: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """``(B, K * S, H, W)`` draws of each structure's consensus query with the fixed (or fresh) noise;
        ``mean``, ``sigma`` ``(B, K, R + 1, H, W)``, ``factors`` ``(B, K, R + 1, rank, H, W)``."""
        b, k, h, w = mean.shape[0], mean.shape[1], mean.shape[-2], mean.shape[-1]
        factor_noise = self.factor_noise
        pixel_noise = tiled_pixel_noise(self.pixel_noise, h, w)
        if self.random_sampling:
            factor_noise = torch.randn_like(factor_noise)
            pixel_noise = torch.randn_like(pixel_noise)
        # (B, K, 1, H, W) against (S, H, W) noise: (B, K, S, H, W)
        samples = sample_logit_gaussian(mean[:, :, :1], sigma[:, :, :1], pixel_noise, factors[:, :, :1], factor_noise)
        return samples.reshape(b, k * samples.shape[2], h, w)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean, sigma, factors = self.query_gaussians(self.backbone(image))
        b, k, q, h, w = mean.shape[0], self.num_structures, self.num_raters + 1, mean.shape[-2], mean.shape[-1]
        mean, sigma = mean.reshape(b, k, q, h, w), sigma.reshape(b, k, q, h, w)
        parts: list[torch.Tensor] = []
        if "personalized" in self.output_mode:
            parts.append(mean[:, :, 1:].reshape(b, k * self.num_raters, h, w))
        if "consensus" in self.output_mode:
            parts.append(mean[:, :, 0])
        if "samples" in self.output_mode:
            parts.append(self._consensus_samples(mean, sigma, factors.reshape(b, k, q, self.rank, h, w)))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ training
    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "consensus", "rater"}``: image ``(B, C, H, W)``, rater stack ``(B, K * R, H, W)``
        (structure-major), rater mask ``(B, R)`` or ``(B, K * R)`` bool (None: all present)."""
        label, rater_mask = check_structured_batch(image, label, rater_mask, self.num_raters, self.num_structures)
        if not bool(rater_mask.any()):
            raise MultiRaterDataError(
                "no rater annotated any sample of the batch (rater_mask all False); drop such samples from the datalist."
            )
        mean, sigma, factors = self.query_gaussians(self.backbone(image))
        b, m, q = image.shape[0], self.num_mc_samples, self.num_queries
        pixel_noise = torch.randn(b, m, q, *mean.shape[-2:], device=mean.device, dtype=mean.dtype)
        factor_noise = torch.randn(b, m, q, self.rank, device=mean.device, dtype=mean.dtype)
        # (B, M, Q, H, W): reparameterised, the gradient reaches mean, sigma and factors
        samples = sample_logit_gaussian(mean.unsqueeze(1), sigma.unsqueeze(1), pixel_noise, factors.unsqueeze(1),
                                        factor_noise)
        consensus, rater = structure_terms(samples, label, rater_mask, self.num_structures)
        return {"loss": consensus + self.rater_weight * rater, "consensus": consensus, "rater": rater}
