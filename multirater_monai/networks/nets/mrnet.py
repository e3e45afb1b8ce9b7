"""MR-Net (Ji et al., CVPR 2021): a rater-expertise vector conditions the network; multi-rater reconstruction
and uncertainty-guided refinement.

"Learning calibrated medical image segmentation via multi-rater agreement modeling". What the seeds say
(AVAP, its ref. [28]; D-Persona ref. [15]): MR-Net "incorporate[s] the multi-rater (dis-)agreement cues and
generate[s] calibrated model predictions that better reflect the underlying agreement among multiple
experts"; it "used an explicit expertness code to denote the modified training labels"; it is evaluated
with the soft Dice over the thresholds {0.1, 0.3, 0.5, 0.7, 0.9} against the mean vote ('Mean Voting') and
per rater ('Average'), on RIGA (AVAP Table II). The three parts below follow the paper's description; how
each is built here is ours (bundles/mrnet/docs/README.md lists what we chose where the seeds are silent).

* **Expertise-aware inference**: a U-Net backbone gives the feature map ``F`` of the image once. An
  expertise vector ``w`` (R non-negative weights summing to 1, one per rater) is tiled over the image and
  decoded with ``F`` by a 1x1-convolution head (:class:`LatentCombiningHead`, ``w`` as its code) into a
  first ("coarse") prediction of the expertise-weighted fusion of the raters' masks,
  ``y_w = sum_r w_r y_r``: the explicit expertness code and the modified training label. With
  ``rater_readout`` (the default) the head ends in one output per (structure, rater), a "readout", and the
  prediction for ``w`` is their fusion as the target's: ``logit(sum_r w_r sigmoid(readout_r))``
  (``readout_space="probability"``; ``"logit"``: ``sum_r w_r readout_r``), the vector entering both the
  hidden layer and the output layer. Without it (bundle 0.2.0) the vector only shifted the hidden layer of one
  shared output, and the per-rater outputs fell far below a one-head-per-rater U-Net's (issue 13).
* **Multi-rater reconstruction**: from ``F``, the coarse probability and ``w``, a small head
  (:class:`RaterReconstructionHead`) predicts every rater's mask (K * R logits), trained against the raters'
  own masks: the fused prediction must keep what distinguishes the raters.
* **Uncertainty-guided refinement**: the disagreement of the reconstructed raters, their probabilities'
  variance over the raters scaled to [0, 1] (``4 var``; 1 where half of them say yes), weights the features
  as a soft attention (``F * (1 + u)``) and enters, with the coarse probability and ``w``, a second head
  (:class:`UncertaintyRefinementHead`) whose residual corrects the coarse logits: the final prediction.

Training (:meth:`MRNet.training_objective`; terms ``loss, refined, coarse, reconstruction``): per image the
vectors of :meth:`MRNet.training_codes`, with ``anchor_codes`` (default) the equal-weight vector and each
rater's one-hot vector (the ones inference reads), plus ``random_codes`` random expertise vectors
``w ~ Dirichlet(concentration)`` over the PRESENT raters (an absent rater has weight 0 and the others are
renormalised, i.e. a Dirichlet over the present raters); every vector's soft target ``y_w`` per structure (the
equal vector's: the mean of the present raters; an absent rater's one-hot target is undefined and not
counted), all vectors through one backbone pass, and::

    loss = refined + coarse_weight * coarse + reconstruction_weight * reconstruction

the refined and the coarse prediction against ``y_w`` by ``fused_loss``, the reconstruction against each
present rater's mask with batch Dice + binary cross entropy (:class:`PresentRaterDiceBCELoss`); each term the
mean over the (vector, structure) channels. ``fused_loss``: ``"hard_dice+bce"`` (default) the cross entropy on
every fused label and the Dice only on the hard ones (a one-hot vector's, or where the raters agree): the
Dice of a soft label is best for a map sharper than the label, which the 'Mean Voting' soft Dice penalises,
while the cross entropy is least where the probability equals the label; ``"dice+bce"`` both everywhere
(bundle 0.2.0); ``"bce"`` the cross entropy alone (on lidc-phantom in 0.2.0: 'Mean Voting' +0.014, 'Average'
-0.057). bundles/mrnet/docs/comparison.md has the synthetic2 runs behind each choice.

Inference ``forward(image)`` gives the final (refined) logits for a set of expertise vectors, one backbone
pass, by ``output_mode``:

* ``calibrated``: K maps for the equal-weight vector ``w = (1/R, ..., 1/R)``, i.e. the mean vote;
* ``personalized``: K * R outputs, output r for the one-hot vector ``e_r`` (structure-major);
* ``samples``: K * S outputs for S random vectors drawn from ``Dirichlet(concentration)`` (fixed buffers
  from ``sample_seed``; None: fresh draws at every call), structure-major;
* ``calibrated+personalized`` (default: training, validation, the 'Mean Voting' / 'Average' table) and
  ``all`` (calibrated, personalized, samples: what inference writes).

Label layout (the project's multi-structure contract): ``label`` ``(B, K * R, *sp)`` structure-major,
``rater_mask`` ``(B, R)`` or ``(B, K * R)``. TorchScript: ``torch.jit.script`` works with ``encoder="small"``,
``torch.jit.trace`` with both encoders.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn

from ...losses.present_rater_dice_bce import PresentRaterDiceBCELoss
from ...utils.errors import MultiRaterDataError
from ..blocks.backbone import BackboneConfig
from ..blocks.latent_head import LatentCombiningHead
from ..blocks.sampling import KEEP
from ..method import MultiRaterMethod
from ..rater_batch import check_structured_batch

__all__ = [
    "MRNet",
    "MRNET_OUTPUT_MODES",
    "FUSED_LOSSES",
    "RaterReconstructionHead",
    "UncertaintyRefinementHead",
    "expertise_fused_label",
    "mix_rater_readouts",
    "READOUT_SPACES",
    "random_expertise",
]

MRNET_OUTPUT_MODES = ("calibrated+personalized", "calibrated", "personalized", "samples", "all")
FUSED_LOSSES = ("bce", "dice+bce", "hard_dice+bce")
READOUT_SPACES = ("probability", "logit")


def random_expertise(
    present: torch.Tensor, concentration: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(B, R)`` random expertise vectors: ``Dirichlet(concentration)`` over each row's present raters
    (``present`` ``(B, R)`` bool); absent raters get weight 0. Normalised Gamma draws are a Dirichlet draw."""
    present = present.to(torch.bool)
    if not bool(present.any(dim=1).all()):
        raise MultiRaterDataError("a sample has no annotating rater (rater_mask all False); drop it from the datalist.")
    alpha = torch.full(present.shape, float(concentration), dtype=torch.float32)
    if generator is None:
        gamma = torch._standard_gamma(alpha)
    else:  # torch's Gamma sampler takes no generator: draw from the generator's state in a forked stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            gamma = torch._standard_gamma(alpha)
    # a Gamma draw can underflow to 0 for small concentrations; the floor keeps every present rater in play
    gamma = gamma.clamp(min=1e-12).to(present.device) * present
    return gamma / gamma.sum(dim=1, keepdim=True)


def expertise_fused_label(
    label: torch.Tensor, weights: torch.Tensor, present: torch.Tensor, num_structures: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The expertise-weighted soft label per structure and whether it is defined.

    ``label`` ``(B, K * R, *sp)`` structure-major, ``weights`` ``(B, R)``, ``present`` ``(B, K * R)`` bool.
    Returns ``target`` ``(B, K, *sp)`` with ``target_k = sum_r w_r m_kr y_kr / sum_r w_r m_kr`` (absent raters
    excluded, the weights renormalised over the present ones) and ``valid`` ``(B, K)`` bool (some present
    rater with weight > 0; the target is 0 where it is not).
    """
    batch, spatial = label.shape[0], label.shape[2:]
    num_raters = weights.shape[1]
    stack = label.reshape(batch, num_structures, num_raters, *spatial)
    w = weights[:, None, :] * present.reshape(batch, num_structures, num_raters).to(weights.dtype)  # (B, K, R)
    total = w.sum(dim=2)  # (B, K)
    valid = total > 0
    w = w / torch.where(valid, total, torch.ones_like(total))[..., None]
    target = (w.reshape(batch, num_structures, num_raters, *([1] * len(spatial))).to(label.dtype) * stack).sum(2)
    return target, valid


def mix_rater_readouts(logits: torch.Tensor, codes: torch.Tensor, num_structures: int,
                       space: str = "probability") -> torch.Tensor:
    """``(B, N, K * R, *sp)`` per-rater readouts (logits, structure-major) and ``(B, N, R)`` expertise vectors ->
    ``(B, N, K, *sp)`` logits of their expertise-weighted fusion.

    ``space="probability"``: ``logit(sum_r w_r sigmoid(logits_kr))``, the prediction fused as the target
    ``y_w = sum_r w_r y_r`` is (the equal vector gives the mean of the per-rater probabilities), computed
    as ``logsumexp_r(log w_r + log sigmoid(l)) - logsumexp_r(log w_r + log sigmoid(-l))`` (exact, stable, and
    a zero weight drops its rater). ``space="logit"``: ``sum_r w_r logits_kr``. A one-hot vector reads its
    rater's own output in both."""
    b, n, num_raters = codes.shape[0], codes.shape[1], codes.shape[2]
    spatial = list(logits.shape[3:])
    stack = logits.reshape([b, n, num_structures, num_raters] + spatial)
    weights = codes.to(logits.dtype).reshape([b, n, 1, num_raters] + [1] * len(spatial))
    if space == "logit":
        return (stack * weights).sum(3)
    log_w = torch.log(weights)
    positive = torch.logsumexp(log_w + nn.functional.logsigmoid(stack), dim=3)
    negative = torch.logsumexp(log_w + nn.functional.logsigmoid(-stack), dim=3)
    return positive - negative


def _per_code(h: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """``(B, N, hidden)`` (a linear map of the codes) -> ``(B, N, hidden, 1, ..., 1)``, broadcast over the image."""
    shape = list(h.shape) + [1] * spatial_dims
    return h.reshape(shape)


class RaterReconstructionHead(nn.Module):
    """Multi-rater reconstruction: ``(features (B, F, *sp), prob (B, N, K, *sp), codes (B, N, R))`` ->
    ``(B, N, K * R, *sp)`` logits of every rater's mask, structure-major.

    A 1x1 convolution of ``[features, prob, tile(code)]`` is split into its three parts (the features' part
    once per image, the code's once per code), then a 3x3 and a 1x1 convolution per code.
    """

    def __init__(self, feature_channels: int, num_raters: int, num_structures: int = 1, hidden: int = 16,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = int(spatial_dims)
        self.from_features = conv(feature_channels, hidden, kernel_size=1, bias=False)
        self.from_prediction = conv(num_structures, hidden, kernel_size=1, bias=False)
        self.from_code = nn.Linear(num_raters, hidden)
        self.mix = conv(hidden, hidden, kernel_size=3, padding=1)
        self.out = conv(hidden, num_structures * num_raters, kernel_size=1)

    def forward(self, features: torch.Tensor, prob: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        b, n = prob.shape[0], prob.shape[1]
        per_code = self.from_prediction(prob.flatten(0, 1))
        h = per_code.reshape([b, n] + list(per_code.shape[1:])) + self.from_features(features).unsqueeze(1)
        h = torch.relu(h + _per_code(self.from_code(codes), self.spatial_dims))
        h = self.out(torch.relu(self.mix(h.flatten(0, 1))))
        return h.reshape([b, n] + list(h.shape[1:]))


class UncertaintyRefinementHead(nn.Module):
    """Uncertainty-guided refinement: ``(features, coarse logits (B, N, K, *sp), uncertainty (B, N, K, *sp),
    codes (B, N, R))`` -> refined logits ``(B, N, K, *sp)`` = coarse + a residual.

    The features' 1x1 projection is weighted by ``1 + mean_k(u)`` (soft attention on the pixels the raters
    disagree on) and added to the projections of ``[sigmoid(coarse), u]`` and of the code; a 3x3 and a 1x1
    convolution give the residual. With ``rater_readout`` the last convolution gives one residual per rater
    (K * R channels), mixed by the expertise vector (:func:`mix_rater_readouts`).
    """

    def __init__(self, feature_channels: int, num_raters: int, num_structures: int = 1, hidden: int = 16,
                 spatial_dims: int = 2, rater_readout: bool = False) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = int(spatial_dims)
        self.num_structures = int(num_structures)
        self.rater_readout = bool(rater_readout)
        self.from_features = conv(feature_channels, hidden, kernel_size=1, bias=False)
        self.from_maps = conv(2 * num_structures, hidden, kernel_size=1, bias=False)
        self.from_code = nn.Linear(num_raters, hidden)
        self.mix = conv(hidden, hidden, kernel_size=3, padding=1)
        self.out = conv(hidden, num_structures * (num_raters if rater_readout else 1), kernel_size=1)

    def forward(self, features: torch.Tensor, coarse: torch.Tensor, uncertainty: torch.Tensor,
                codes: torch.Tensor) -> torch.Tensor:
        """The refined logits ``coarse + residual`` (with ``rater_readout``: the residuals mixed in logit space;
        :class:`MRNet` adds them to the per-rater readouts instead, see :meth:`residual`)."""
        residual = self.residual(features, coarse, uncertainty, codes)
        if self.rater_readout:
            residual = mix_rater_readouts(residual, codes, self.num_structures, "logit")
        return coarse + residual

    def residual(self, features: torch.Tensor, coarse: torch.Tensor, uncertainty: torch.Tensor,
                 codes: torch.Tensor) -> torch.Tensor:
        """``(B, N, K, *sp)``, or ``(B, N, K * R, *sp)`` per-rater residuals with ``rater_readout``."""
        b, n = coarse.shape[0], coarse.shape[1]
        attention = 1.0 + uncertainty.mean(dim=2, keepdim=True)  # (B, N, 1, *sp)
        h = self.from_features(features).unsqueeze(1) * attention
        maps = self.from_maps(torch.cat([torch.sigmoid(coarse), uncertainty], dim=2).flatten(0, 1))
        h = h + maps.reshape([b, n] + list(maps.shape[1:])) + _per_code(self.from_code(codes), self.spatial_dims)
        residual = self.out(torch.relu(self.mix(torch.relu(h).flatten(0, 1))))
        return residual.reshape([b, n] + list(residual.shape[1:]))


def _fixed_expertise(rows: int, num_raters: int, concentration: float, seed: int | None) -> torch.Tensor:
    """``(rows, R)`` Dirichlet draws from ``seed`` (the sample vectors of the ``samples`` group)."""
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    return random_expertise(torch.ones(rows, num_raters, dtype=torch.bool), concentration, generator)


class MRNet(MultiRaterMethod):
    """MR-Net; see the module docstring.

    Args:
        backbone: feature network ``image -> (B, feature_channels, *sp)``.
        expertise_head: :class:`LatentCombiningHead` with ``latent_dim = R`` and ``out_channels = K``.
        reconstruction_head: :class:`RaterReconstructionHead`.
        refinement_head: :class:`UncertaintyRefinementHead`.
        num_raters: R.
        num_structures: K.
        concentration: Dirichlet concentration of the random expertise vectors (training and samples);
            1 is uniform on the simplex, smaller values put more vectors near one rater.
        num_samples: S, random expertise vectors of the ``samples`` group.
        coarse_weight, reconstruction_weight: weights of the coarse and reconstruction loss terms.
        fused_loss: loss of the predictions against the fused soft label, one of :data:`FUSED_LOSSES`.
        anchor_codes: also train, for every image, the equal-weight and each rater's one-hot vector.
        random_codes: random (Dirichlet) vectors per image and training step.
        readout_space: how per-rater readouts are fused by a vector (with a ``rater_readout`` refinement
            head), one of :data:`READOUT_SPACES`.
        output_mode: one of :data:`MRNET_OUTPUT_MODES`.
        sample_seed: seed of the sample vectors (None: fresh draws at every call).
    """

    output_modes = MRNET_OUTPUT_MODES

    def __init__(
        self,
        backbone: nn.Module,
        expertise_head: LatentCombiningHead,
        reconstruction_head: RaterReconstructionHead,
        refinement_head: UncertaintyRefinementHead,
        num_raters: int,
        num_structures: int = 1,
        concentration: float = 0.5,
        num_samples: int = 16,
        coarse_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        fused_loss: str = "hard_dice+bce",
        output_mode: str = "calibrated+personalized",
        sample_seed: int | None = 0,
        anchor_codes: bool = True,
        random_codes: int = 1,
        readout_space: str = "probability",
    ) -> None:
        super().__init__(num_raters, num_structures)
        # with a rater readout the expertise head gives one output per (structure, rater), mixed by the vector
        self.rater_readout = bool(getattr(refinement_head, "rater_readout", False))
        head_outputs = num_structures * (num_raters if self.rater_readout else 1)
        if expertise_head.latent_dim != num_raters or expertise_head.out_channels != head_outputs:
            raise ValueError(
                f"expertise_head must take R={num_raters}-long expertise vectors and give {head_outputs} outputs "
                f"(K={num_structures}{' x R' if self.rater_readout else ''}), got latent_dim="
                f"{expertise_head.latent_dim}, out_channels={expertise_head.out_channels}."
            )
        if readout_space not in READOUT_SPACES:
            raise ValueError(f"readout_space must be one of {READOUT_SPACES}, got {readout_space!r}.")
        if fused_loss not in FUSED_LOSSES:
            raise ValueError(f"fused_loss must be one of {FUSED_LOSSES}, got {fused_loss!r}.")
        if float(concentration) <= 0:
            raise ValueError(f"concentration must be > 0, got {concentration}.")
        if int(random_codes) < 0 or (int(random_codes) == 0 and not anchor_codes):
            raise ValueError(f"random_codes must be >= 0, and > 0 without anchor_codes, got {random_codes}.")
        if float(coarse_weight) < 0 or float(reconstruction_weight) < 0:
            raise ValueError(f"coarse_weight and reconstruction_weight must be >= 0, got {coarse_weight}, "
                             f"{reconstruction_weight}.")
        self.backbone = backbone
        self.expertise_head = expertise_head
        self.reconstruction_head = reconstruction_head
        self.refinement_head = refinement_head
        self.concentration = float(concentration)
        self.coarse_weight = float(coarse_weight)
        self.reconstruction_weight = float(reconstruction_weight)
        self.fused_loss = fused_loss
        self.readout_space = readout_space
        self.anchor_codes = bool(anchor_codes)
        self.random_codes = int(random_codes)
        r = self.num_raters
        # the calibrated vector (equal weights, the mean vote), then the one-hot vector of each rater
        self.register_buffer("fixed_codes", torch.cat([torch.full((1, r), 1.0 / r), torch.eye(r)]), persistent=False)
        self.sample_seed = sample_seed
        self.random_sampling = sample_seed is None
        self.register_buffer("sample_codes", _fixed_expertise(num_samples, r, self.concentration, sample_seed),
                             persistent=False)
        self._losses = {"dice_bce": PresentRaterDiceBCELoss()}  # no state; kept out of the module tree
        self.set_output_mode(output_mode)

    @classmethod
    def build(
        cls,
        num_raters: int = 4,
        num_structures: int = 1,
        backbone: BackboneConfig | None = None,
        head_hidden: int = 16,
        head_convs: int = 3,
        rater_readout: bool = True,
        **kwargs: Any,
    ) -> MRNet:
        """The whole network from plain arguments; ``rater_readout``: the expertise and refinement heads end in
        one output per (structure, rater), fused by the vector (False: one shared output, bundle 0.2.0);
        ``kwargs`` go to the constructor (``concentration``, ``num_samples``, loss weights, ``output_mode``,
        ``sample_seed``, ``anchor_codes``, ``random_codes``, ``readout_space``)."""
        config = backbone or BackboneConfig()
        backbone_net = config.build()  # built first: the initialisation depends on the order
        features, dims = config.feature_channels, config.spatial_dims
        outputs = num_structures * (num_raters if rater_readout else 1)
        expertise = LatentCombiningHead(features, num_raters, outputs, head_hidden, head_convs)
        reconstruction = RaterReconstructionHead(features, num_raters, num_structures, head_hidden, dims)
        refinement = UncertaintyRefinementHead(features, num_raters, num_structures, head_hidden, dims, rater_readout)
        return cls(backbone_net, expertise, reconstruction, refinement, num_raters, num_structures, **kwargs)

    # ------------------------------------------------------------------ settings
    @property
    def num_samples(self) -> int:
        return int(self.sample_codes.shape[0])

    def output_groups(self) -> dict[str, int]:
        k = self.num_structures
        groups: dict[str, int] = {}
        if self.output_mode in ("calibrated", "calibrated+personalized", "all"):
            groups["calibrated"] = k
        if self.output_mode in ("personalized", "calibrated+personalized", "all"):
            groups["personalized"] = k * self.num_raters
        if self.output_mode in ("samples", "all"):
            groups["samples"] = k * self.num_samples
        return groups

    @torch.jit.unused
    def set_sampling(self, num_samples: int | None = None, sample_seed: Any = KEEP) -> None:
        """Change S and/or the seed of the sample vectors (None: fresh draws at every call)."""
        if sample_seed is not KEEP:
            self.sample_seed = sample_seed
            self.random_sampling = sample_seed is None
        rows = self.num_samples if num_samples is None else int(num_samples)
        codes = _fixed_expertise(rows, self.num_raters, self.concentration, self.sample_seed)
        self.sample_codes = codes.to(self.sample_codes.device, self.sample_codes.dtype)

    # ------------------------------------------------------------------ the model
    def predict(self, features: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For expertise vectors ``codes`` ``(B, N, R)``: refined logits ``(B, N, K, *sp)``, coarse logits
        ``(B, N, K, *sp)`` and reconstruction logits ``(B, N, K * R, *sp)``."""
        coarse = self.expertise_head(features, codes)
        readouts = coarse
        if self.rater_readout:
            if coarse.dim() == codes.dim() + features.dim() - 3:  # one output channel squeezed (K = R = 1)
                readouts = coarse.unsqueeze(2)
            coarse = mix_rater_readouts(readouts, codes, self.num_structures, self.readout_space)
        elif self.num_structures == 1:
            coarse = coarse.unsqueeze(2)
        reconstruction = self.reconstruction_head(features, torch.sigmoid(coarse), codes)
        b, n = coarse.shape[0], coarse.shape[1]
        raters = torch.sigmoid(reconstruction).reshape([b, n, self.num_structures, self.num_raters]
                                                        + list(coarse.shape[3:]))
        # the guide, not a target: the refinement's loss must not bend the reconstruction
        uncertainty = (4.0 * raters.var(dim=3, unbiased=False)).detach()
        if self.rater_readout:
            # each rater's readout gets its own residual; the refined readouts are fused as the coarse ones
            residual = self.refinement_head.residual(features, coarse, uncertainty, codes)
            refined = mix_rater_readouts(readouts + residual, codes, self.num_structures, self.readout_space)
        else:
            refined = self.refinement_head(features, coarse, uncertainty, codes)
        return refined, coarse, reconstruction

    def _output_codes(self) -> list[torch.Tensor]:
        """The expertise vectors of each output group of the current mode, in channel order: ``[(n_g, R), ...]``."""
        parts: list[torch.Tensor] = []
        if self.output_mode in ("calibrated", "calibrated+personalized", "all"):
            parts.append(self.fixed_codes[:1])
        if self.output_mode in ("personalized", "calibrated+personalized", "all"):
            parts.append(self.fixed_codes[1:])
        if self.output_mode in ("samples", "all"):
            samples = self.sample_codes
            if self.random_sampling:
                gamma = torch._standard_gamma(torch.full_like(samples, self.concentration)).clamp(min=1e-12)
                samples = gamma / gamma.sum(dim=1, keepdim=True)
            parts.append(samples)
        return parts

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image)
        parts = self._output_codes()
        codes = torch.cat(parts, dim=0)
        codes = codes.unsqueeze(0).expand(image.shape[0], codes.shape[0], codes.shape[1])
        refined, _, _ = self.predict(features, codes)  # every vector of every group in one batched head pass
        outputs: list[torch.Tensor] = []
        start = 0
        for part in parts:
            n = part.shape[0]
            group = refined[:, start:start + n].transpose(1, 2)  # (B, K, n, *sp): structure-major
            outputs.append(group.reshape([group.shape[0], n * self.num_structures] + list(group.shape[3:])))
            start += n
        return torch.cat(outputs, dim=1)

    # ------------------------------------------------------------------ training
    def _check_batch(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float label ``(B, K * R, *sp)`` and bool mask ``(B, K * R)``."""
        return check_structured_batch(image, label, rater_mask, self.num_raters, self.num_structures)

    def _fused_loss(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The loss of a prediction ``(B, C, *sp)`` against the fused labels, by ``fused_loss``.

        "bce": the cross entropy alone, least where the probability equals the soft label (calibrated by
        construction). "dice+bce": both on every label; the Dice of a soft label is best for a sharper map than
        the label, which the 'Mean Voting' soft Dice (thresholds 0.1 ... 0.9) penalises. "hard_dice+bce": the
        cross entropy on every label, the Dice only on the (sample, channel) pairs whose label is a hard mask
        (a one-hot vector's, or raters who agree), so the per-rater outputs keep the Dice's sharpness and the
        mixtures stay calibrated.
        """
        loss_fn = self._losses["dice_bce"]
        dice, bce = loss_fn(logits, target, valid)
        if self.fused_loss == "bce":
            return bce
        if self.fused_loss == "dice+bce":
            return dice + bce
        hard = valid & ((target == 0) | (target == 1)).flatten(2).all(dim=2)
        if not bool(hard.any()):
            return bce
        return loss_fn(logits, target, hard)[0] + bce

    def training_codes(self, per_rater: torch.Tensor) -> torch.Tensor:
        """``(B, N, R)`` expertise vectors of one training step, ``per_rater`` ``(B, R)`` the present raters.

        ``random_codes`` Dirichlet draws per image (:func:`random_expertise`) and, with ``anchor_codes``, first
        the vectors inference reads: the equal-weight vector (the calibrated map) and each rater's one-hot
        vector (the per-rater outputs). A Dirichlet draw almost never lies near the equal vector (for a
        concentration below 1 its density is least there) nor exactly on a one-hot vector, so without the
        anchors the outputs that are scored are ones the heads were never trained on. All vectors of an image
        share one backbone pass; each costs only the heads.
        """
        batch = per_rater.shape[0]
        parts: list[torch.Tensor] = []
        if self.anchor_codes:
            parts.append(self.fixed_codes.unsqueeze(0).expand(batch, -1, -1))
        for _ in range(self.random_codes):
            parts.append(random_expertise(per_rater, self.concentration).to(self.fixed_codes.device).unsqueeze(1))
        return torch.cat(parts, dim=1)

    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None,
        expertise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "refined", "coarse", "reconstruction"}``; ``expertise`` ``(B, R)`` or ``(B, N, R)`` fixes the
        vectors (default: :meth:`training_codes`). With N vectors per image every term is the mean over the
        (vector, structure) channels: the Dice per channel over the batch, the cross entropy over the valid
        (sample, channel) pairs; one vector per image is the single-vector loss."""
        label, mask = self._check_batch(image, label, rater_mask)
        batch = label.shape[0]
        per_rater = mask.reshape(batch, self.num_structures, self.num_raters).any(dim=1)  # (B, R)
        if expertise is None:
            expertise = self.training_codes(per_rater)
        if expertise.dim() == 2:
            expertise = expertise.unsqueeze(1)
        expertise = expertise.to(image.device, image.dtype)
        n = expertise.shape[1]
        spatial = list(label.shape[2:])
        # one fused label per (image, vector): the images repeated N times, vector-major within an image
        target, valid = expertise_fused_label(
            label.repeat_interleave(n, dim=0), expertise.reshape(batch * n, -1), mask.repeat_interleave(n, dim=0),
            self.num_structures)
        if not bool(valid.any()):
            raise MultiRaterDataError("no rater annotated any sample of the batch (rater_mask all False); drop such "
                                      "samples from the datalist.")
        target = target.reshape([batch, n * self.num_structures] + spatial)
        valid = valid.reshape(batch, n * self.num_structures)
        refined, coarse, reconstruction = self.predict(self.backbone(image), expertise)
        loss_fn = self._losses["dice_bce"]
        refined_loss = self._fused_loss(refined.flatten(1, 2), target, valid)
        coarse_loss = self._fused_loss(coarse.flatten(1, 2), target, valid)
        reconstruction_loss = sum(loss_fn(reconstruction.flatten(1, 2), label.repeat(1, n, *([1] * len(spatial))),
                                          mask.repeat(1, n)))
        loss = refined_loss + self.coarse_weight * coarse_loss + self.reconstruction_weight * reconstruction_loss
        return {"loss": loss, "refined": refined_loss, "coarse": coarse_loss, "reconstruction": reconstruction_loss}
