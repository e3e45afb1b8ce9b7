"""ProSeg: probabilistic modelling of rater preference (tau) and image ambiguity (Z).

The ProSeg paper (seed 001, sections 4.1-4.3) models the joint distribution of raters R, rater masks
Y and image x with two latent variables per rater i:

* ``tau_i`` (rater preference): Dirichlet prior ``Dir(alpha_0 = 1)``; variational posterior
  ``q(tau | r) = Dir(alpha_r)`` from a class embedding of the rater (``alpha_r = softplus(e_r)``);
  a classifier ``p(r | tau)`` recovers the rater from tau;
* ``z_i`` (image ambiguity): standard normal prior; posterior ``q(z_i | x)`` from an image encoder;
  an image decoder ``p(x | z_i)`` reconstructs the image from it;
* one shared segmentation predictor ``p(y_r | tau_i, z_i)``.

Loss (eqs. 7-9): ``recon`` (MSE of the decoded image) + ``classification`` (CE of the rater from
its tau) + ``seg`` (binary CE of the rater's mask) + ``KL(q(Z|x) || N(0, I))`` +
``KL(q(tau|R) || Dir(alpha_0))``; each term is reported. Only PRESENT raters (``rater_mask``) enter
any term.

Choices where the paper is loose (appendix C.2: "tau 8, Z 128 x 128", U-Net encoder/decoder,
fully connected class embedding and classifier, convolutional predictor), all constructor
arguments:

* the image encoders q(z_i | x) (the paper's phi_1 .. phi_N, section 4.2, Fig. 3) share their
  parameters: one U-Net feature backbone and one 1x1 head giving the mean and log-sigma of a
  ``z_channels`` x H x W map (z_i is a full-resolution map, as "Z 128 x 128" says); each rater's
  z_i is its own draw from it, and one image decoder (two 3x3 convolutions) maps each z_i back to
  the image. The paper does not say whether the phi_i share parameters. ``rater_encoders=True``
  gives each rater its own 1x1 head on the shared backbone; on QUBIQ brain growth (three seeds, the
  comparison's budget) it made the personalized masks differ more but scored lower on every set
  metric, its samples far noisier than the raters (bundles/proseg/docs/comparison.md), so the
  shared encoder is the default;
* the loss is the ELBO of eq. 7 divided by the number of pixels P: segmentation CE, image MSE and
  the KL of Z are per-pixel means, and the two per-rater terms (rater CE and the KL of tau) are
  divided by P. Equal weights per pixel, as in the ELBO; it matters: with the KL of tau weighted
  like a per-pixel mean it pulls every q(tau | r) onto the uniform Dir(1) and the classifier cannot
  tell the raters apart (measured: accuracy 0.45 after 600 steps on synthetic raters). The reported
  ``classification`` and ``kl_tau`` terms are the unscaled per-rater values;
* the predictor sees only ``[z_i, tile(tau_i)]``, as the graphical model says (y depends on tau, z);
* q(tau | r) starts at rater r's corner of the simplex, Dir(1, .., 10 at entry r, .., 1)
  (``initial_tau_peak``): from a random start the raters' draws of tau overlap, Adam leaves the class
  embedding near its start for a whole training run, and the predictor learns to ignore tau (the
  personalized outputs were nearly one mask on lidc-phantom and QUBIQ).

Inference ``forward(image) -> (B, S, *sp)`` logits, by ``output_mode``:

* ``"personalized"``: one output per rater (S = R): tau = mean of q(tau | r), z = mean of q(z_r | x);
* ``"samples"``: personalized samples, sample s for rater ``s mod R``, z sampled from q(z_r | x)
  (the diversity that image ambiguity gives), tau the mean of q(tau | r);
* ``"prior"``: tau sampled from the prior Dir(alpha_0) and z sampled from q(z_i | x) of the rater i
  that the classifier p(r | tau) names for that tau (eq. 11; :meth:`identify_raters`);
* ``"personalized+prior"``: both in one pass, R personalized outputs then S prior samples (the
  bundle's inference output: per-rater masks, and samples for the agreement map).

The noise is fixed by ``sample_seed``, so inference and a TorchScript export are reproducible
(``sample_seed=None`` draws fresh noise at each call): the prior tau draws are a buffer, and z's
noise is drawn per pixel, as in training, from a generator seeded at each call (one noise map per
sample, the same for every image of a batch). Noise constant over the map would not do: the
predictor learned from per-pixel draws, and one coherent shift of the whole map moved the samples
far from every rater (measured on synthetic raters: d_pa 0.69 and Dice_soft 0.28 for 50 samples,
against d_pa 0.41 for the personalized outputs).
Ablations (the paper's Table 2): ``use_tau=False`` feeds zeros for tau and drops the tau terms;
``use_z=False`` uses z's mean without noise and drops the Z KL and the reconstruction.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn
from torch.distributions import Dirichlet, Normal, kl_divergence
from torch.nn import functional as F

from ..blocks.backbone import BackboneConfig
from ..blocks.sampling import KEEP
from ..method import MultiRaterMethod
from ..rater_batch import check_multirater_batch

__all__ = ["ProSeg", "PROSEG_OUTPUT_MODES"]

PROSEG_OUTPUT_MODES = ("personalized", "samples", "prior", "personalized+prior")
# voxels of predictor input per inference chunk: five 128 x 128 maps (see ProSeg._predict_inference)
INFERENCE_CHUNK_VOXELS = 5 * 128 * 128


class ProSeg(MultiRaterMethod):
    """ProSeg network; see the module docstring.

    Args:
        backbone: feature network ``image -> (B, feature_channels, *sp)`` (e.g. :class:`UNetFeatureBackbone`).
        num_raters: R.
        feature_channels: channels of the backbone output.
        in_channels: image channels (the decoders reconstruct them).
        spatial_dims: 2 or 3.
        z_channels: channels of each rater's latent map z_i.
        tau_dim: dimension of tau (paper: 8).
        prior_concentration: alpha_0 of the Dirichlet prior (paper: 1).
        hidden: channels of the decoders and the predictor.
        num_samples: S of the ``"samples"`` and ``"prior"`` modes.
        recon_weight, class_weight, seg_weight, kl_z_weight, kl_tau_weight: loss weights (all 1 in eq. 9).
        rater_encoders: one head of q(z_i | x) per rater, or one shared by all raters (default; see the module docstring).
            Only with ``use_z``: without Z there is no distribution per rater, and z is one deterministic map.
        initial_z_sigma: sigma of q(z | x) at initialisation (the bias of the log-sigma head; None: PyTorch's
            default, sigma about 1). The paper does not state it. At sigma 1 the image's signal in z (mean
            |mu| about 0.2) is buried under unit noise from the first step, the KL of Z keeps it there, and on
            QUBIQ brain growth the predictor never left the all-background answer in 200 steps (every mask
            empty); starting narrow lets the predictor learn from the image first, after which the KL widens
            q(z | x) back to sigma about 1 within about 80 steps (bundles/proseg/docs/comparison.md, ablation).
        initial_tau_peak: q(tau | r) starts at Dir(1, .., peak, .., 1) with the peak at entry r
            (raters beyond ``tau_dim`` start at a seeded random point of the simplex at the same concentration),
            so each rater's draws of tau lie near their own corner from the first step; None: the embedding's
            random initialisation (softplus of N(0, 1): concentrations about 0.8, their sum about 6). The paper
            does not state it. Adam moves the embedding by about its learning rate per step, so in a budget of
            a few hundred steps q(tau | r) stays where it starts: from the random start the draws of the
            raters overlap (the classifier names the rater of 0.50 of the draws on lidc-phantom after 890
            steps, chance 0.25, the concentrations' sum still about 6) and the predictor learns to ignore tau.
        kl_z_warmup_steps: the weight of KL(q(Z|x) || N(0, I)) rises linearly from 0 to ``kl_z_weight``
            over this many training steps (0: the full weight from the start, as eq. 9). At full weight
            from step 0, z carries little of the image (its KL is paid per pixel) and the predictor
            can sit on the all-background answer for hundreds of steps.
        recon_target: what ``p(x | z_i)`` reconstructs: ``"image"`` (the network's input as given) or
            ``"standardized"`` (each image at zero mean and unit variance per channel, the paper's NPC
            preprocessing, App. C.1.1). The MSE of eq. 8 is a Gaussian log-likelihood up to a constant, so its
            weight against the KL of Z scales with the image's variance: an MR image windowed to [0, 1]
            (QUBIQ, variance about 0.05) makes the image term 20 times weaker than the paper's standardized
            one, and z (the predictor's only view of the image) keeps less of it. The input of q(z | x) is
            unchanged either way.
        use_tau, use_z: ablation switches.
        output_mode: see the module docstring.
        sample_seed: seed of the fixed inference noise, or None for fresh noise at every call.
    """

    # forward reads num_samples, so TorchScript compiles it
    __jit_unused_properties__ = ["num_stages", "spatial_divisor"]
    output_modes = PROSEG_OUTPUT_MODES

    def __init__(
        self,
        backbone: nn.Module,
        num_raters: int,
        feature_channels: int,
        in_channels: int = 1,
        spatial_dims: int = 2,
        z_channels: int = 4,
        tau_dim: int = 8,
        prior_concentration: float = 1.0,
        hidden: int = 32,
        num_samples: int = 16,
        recon_weight: float = 1.0,
        class_weight: float = 1.0,
        seg_weight: float = 1.0,
        kl_z_weight: float = 1.0,
        kl_tau_weight: float = 1.0,
        kl_z_warmup_steps: int = 0,
        initial_z_sigma: float | None = 0.05,
        initial_tau_peak: float | None = 10.0,
        rater_encoders: bool = False,
        recon_target: str = "image",
        use_tau: bool = True,
        use_z: bool = True,
        output_mode: str = "personalized",
        sample_seed: int | None = 0,
    ) -> None:
        super().__init__(num_raters)
        conv = Conv[Conv.CONV, spatial_dims]
        r = self.num_raters
        self.in_channels, self.z_channels, self.tau_dim = in_channels, z_channels, tau_dim
        self.backbone = backbone
        # q(z_i | x): a 1x1 head on the features -> (mu, log_sigma) of each encoder's latent map; channels
        # [mu_1, .., mu_E, log_sigma_1, .., log_sigma_E], E = R encoders (phi_i) or one shared
        self.rater_encoders = bool(rater_encoders) and bool(use_z)
        self.num_encoders = r if self.rater_encoders else 1
        self.z_head = conv(feature_channels, 2 * self.num_encoders * z_channels, kernel_size=1)
        if initial_z_sigma is not None:
            if not initial_z_sigma > 0:
                raise ValueError(f"initial_z_sigma must be positive (or None), got {initial_z_sigma}.")
            with torch.no_grad():
                self.z_head.bias[self.num_encoders * z_channels:].fill_(math.log(float(initial_z_sigma)))
        # p(x | z_i)
        self.image_decoder = nn.Sequential(
            conv(z_channels, hidden, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            conv(hidden, in_channels, kernel_size=3, padding=1),
        )
        # q(tau | r) = Dir(softplus(embedding_r)); p(r | tau) an MLP
        self.tau_embedding = nn.Embedding(r, tau_dim)
        if initial_tau_peak is not None:
            self._start_tau_at_corners(float(initial_tau_peak))
        self.classifier = nn.Sequential(nn.Linear(tau_dim, hidden), nn.ReLU(), nn.Linear(hidden, r))
        # p(y | tau_i, z_i), one predictor shared by all raters
        self.predictor = nn.Sequential(
            conv(z_channels + tau_dim, hidden, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            conv(hidden, hidden, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            conv(hidden, 1, kernel_size=1),
        )
        self.prior_concentration = float(prior_concentration)
        if recon_target not in ("image", "standardized"):
            raise ValueError(f"recon_target must be 'image' or 'standardized', got {recon_target!r}.")
        self.recon_target = recon_target
        self.weights = {"recon": float(recon_weight), "classification": float(class_weight),
                        "seg": float(seg_weight), "kl_z": float(kl_z_weight), "kl_tau": float(kl_tau_weight)}
        self.use_tau, self.use_z = bool(use_tau), bool(use_z)
        self.inference_chunk_voxels = INFERENCE_CHUNK_VOXELS
        self.kl_z_warmup_steps = int(kl_z_warmup_steps)
        self.register_buffer("training_steps", torch.zeros((), dtype=torch.long), persistent=False)
        self.set_output_mode(output_mode)
        self.sample_seed = sample_seed
        self.random_sampling = sample_seed is None
        self.noise_seed = 0 if sample_seed is None else int(sample_seed)
        # (S, tau_dim) draws of Dir(alpha_0)
        self.register_buffer("prior_tau", self._draw_prior_tau(num_samples, sample_seed), persistent=False)

    @classmethod
    def build(cls, num_raters: int = 4, backbone: BackboneConfig | None = None, **kwargs: Any) -> ProSeg:
        """The whole network from plain arguments; ``kwargs`` go to the constructor."""
        backbone = backbone or BackboneConfig()
        return cls(backbone.build(), num_raters, backbone.feature_channels, in_channels=backbone.in_channels,
                   spatial_dims=backbone.spatial_dims, **kwargs)

    # ------------------------------------------------------------------ noise and distributions
    def _start_tau_at_corners(self, peak: float) -> None:
        """alpha_r = (1, .., peak at entry r mod tau_dim, .., 1): the inverse of the softplus that
        :meth:`tau_concentration` applies."""
        if not peak > 1.0:
            raise ValueError(f"initial_tau_peak must be above 1 (the prior's concentration), got {peak}.")
        r, d = self.num_raters, self.tau_dim
        alpha = torch.ones(r, d)
        alpha[torch.arange(min(r, d)), torch.arange(min(r, d))] = peak
        if r > d:  # more raters than corners: seeded points of the simplex, at the corners' total concentration
            g = torch.Generator().manual_seed(0)
            points = torch.rand(r - d, d, generator=g) + 0.05
            alpha[d:] = points / points.sum(-1, keepdim=True) * (peak + d - 1)
        with torch.no_grad():
            self.tau_embedding.weight.copy_(torch.log(torch.expm1(alpha - 1e-3)))

    def _draw_prior_tau(self, num_samples: int, seed: int | None) -> torch.Tensor:
        concentration = torch.full((num_samples, self.tau_dim), self.prior_concentration)
        if seed is None:
            gamma = torch._standard_gamma(concentration)
        else:  # _standard_gamma takes no generator: seed a forked global generator instead
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                gamma = torch._standard_gamma(concentration)
        return gamma / gamma.sum(-1, keepdim=True)

    @property
    def num_samples(self) -> int:
        return int(self.prior_tau.shape[0])

    def output_groups(self) -> dict[str, int]:
        if self.output_mode == "personalized":
            return {"personalized": self.num_raters}
        if self.output_mode in ("samples", "prior"):
            return {"samples": self.num_samples}
        return {"personalized": self.num_raters, "samples": self.num_samples}

    @torch.jit.unused
    def set_sampling(self, num_samples: int | None = None, sample_seed: Any = KEEP) -> None:
        """Change the number of samples and/or the seed (None: fresh noise at every call)."""
        if sample_seed is not KEEP:
            self.sample_seed = sample_seed
            self.random_sampling = sample_seed is None
            self.noise_seed = 0 if sample_seed is None else int(sample_seed)
        n = self.num_samples if num_samples is None else int(num_samples)
        self.prior_tau = self._draw_prior_tau(n, self.sample_seed).to(self.prior_tau)

    def tau_concentration(self) -> torch.Tensor:
        """``alpha_r`` of q(tau | r) for every rater: (R, tau_dim), positive."""
        return F.softplus(self.tau_embedding.weight) + 1e-3

    def tau_posterior(self) -> Dirichlet:
        return Dirichlet(self.tau_concentration())

    def tau_prior(self) -> Dirichlet:
        alpha = torch.full((self.num_raters, self.tau_dim), self.prior_concentration,
                           device=self.tau_embedding.weight.device)
        return Dirichlet(alpha)

    def _z_params(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu and log_sigma of q(z_i | x): each (B, E, z_channels, *sp), E = R encoders or 1 shared."""
        params = self.z_head(features)
        shape = [params.shape[0], 2, self.num_encoders, self.z_channels] + list(params.shape[2:])
        params = params.view(shape)
        return params[:, 0], params[:, 1]

    def _per_output(self, params: torch.Tensor, raters: torch.Tensor) -> torch.Tensor:
        """(B, S, z_channels, *sp): the encoder of ``raters[s]`` for output s (the shared one when E = 1)."""
        if self.rater_encoders:
            return params[:, raters]
        return params.expand([-1, int(raters.shape[0])] + list(params.shape[2:]))

    def _predictor_input(self, z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``[z_i, tile(tau_i)]``: (B * S, z_channels + tau_dim, *sp) for z (B, S, z_channels, *sp), tau (B, S, tau_dim)."""
        b, s = z.shape[0], z.shape[1]
        tiled = tau.reshape([b * s, self.tau_dim] + [1] * (z.dim() - 3)).expand([-1, -1] + list(z.shape[3:]))
        if not self.use_tau:
            tiled = torch.zeros_like(tiled)
        return torch.cat([z.reshape([b * s] + list(z.shape[2:])), tiled], dim=1)

    def _predict(self, z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Logits (B, S, *sp) for z (B, S, z_channels, *sp) and tau (B, S, tau_dim), one batched call (training)."""
        logits = self.predictor(self._predictor_input(z, tau))
        return logits.view([z.shape[0], z.shape[1]] + list(z.shape[3:]))

    def _predict_inference(self, z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The same logits as :meth:`_predict`, computed for inference without the work that repeats.

        Every sample runs the full-resolution predictor, so 50 samples cost 50 predictor passes. Three
        things make each pass cheaper without changing its arithmetic (the logits agree with
        :meth:`_predict` to float rounding, ``tests/test_networks_proseg.py``):

        * the first convolution is split into its z part and its tau part: tile(tau) is constant over
          the image, so its response differs only where the 3x3 kernel meets the zero padding; it is
          computed on a 3x3 map per sample and added region by region (border, inside), and only z's channels are
          convolved at full resolution (half the input channels of the paper network's first layer);
        * the maps run in chunks of about ``inference_chunk_voxels`` voxels in the channels-last layout
          (oneDNN's native layout on CPU): in one batched call their hidden maps (50 x hidden x H x W)
          fit no cache;
        * the last 1x1 convolution (hidden -> 1) is a matrix-vector product over the channels-last maps.

        On 2 CPU cores this took the paper network's 50 prior samples from 1211 ms (one batched call) to
        about a quarter of that (``benchmarks/bench_proseg.py``)."""
        first, second, last = self.predictor[0], self.predictor[2], self.predictor[4]
        b, s, zc = z.shape[0], z.shape[1], self.z_channels
        spatial = list(z.shape[3:])
        z = z.reshape([b * s, zc] + spatial)
        tau = tau.reshape(b * s, self.tau_dim)
        if not self.use_tau:
            tau = torch.zeros_like(tau)
        # the tau part of the first 3x3 convolution (padding 1) on a map of at most 3 voxels per side:
        # voxel 0 and the last voxel of each axis meet the padding, every inner voxel sees what the
        # middle one does; so the image splits into at most 3 regions per axis (first, inner, last),
        # and each region gets its voxel of the small map added in place (one broadcast add each)
        small = [min(size, 3) for size in spatial]
        tau_map = tau.reshape([b * s, self.tau_dim] + [1] * len(spatial)).expand([-1, -1] + small)
        if len(spatial) == 2:
            tau_response = F.conv2d(tau_map, first.weight[:, zc:], first.bias, padding=1)
        else:
            tau_response = F.conv3d(tau_map, first.weight[:, zc:], first.bias, padding=1)
        no_axis: list[int] = []
        regions: list[list[int]] = [no_axis]  # per region: (voxel of the small map, start, length) per axis
        for axis, size in enumerate(spatial):
            grown: list[list[int]] = []
            for region in regions:
                for voxel in range(small[axis]):
                    if voxel == 0:
                        begin, length = 0, 1
                    elif voxel == small[axis] - 1:
                        begin, length = size - 1, 1
                    else:
                        begin, length = 1, size - 2
                    grown.append(region + [voxel, begin, length])
            regions = grown
        memory_format = torch.channels_last if len(spatial) == 2 else torch.channels_last_3d
        voxels = 1
        for size in spatial:
            voxels *= size
        chunk = max(1, self.inference_chunk_voxels // voxels)
        w_last, b_last = last.weight.reshape(-1, 1), last.bias  # (hidden, 1), (1,)
        assert b_last is not None  # the predictor's convolutions have biases (also refines the type for TorchScript)
        outputs: list[torch.Tensor] = []
        # torch.split, not slicing: the input may be a MONAI MetaTensor, whose slices along the batch
        # dimension try to split its metadata per item
        z_parts, tau_parts = torch.split(z, chunk), torch.split(tau_response, chunk)
        for index in range(len(z_parts)):
            part = z_parts[index].contiguous(memory_format=memory_format)
            if len(spatial) == 2:
                hidden = F.conv2d(part, first.weight[:, :zc], None, padding=1)
            else:
                hidden = F.conv3d(part, first.weight[:, :zc], None, padding=1)
            tau_part = tau_parts[index]
            for region in regions:
                target, source = hidden, tau_part
                for axis in range(len(spatial)):
                    voxel, begin, length = region[3 * axis], region[3 * axis + 1], region[3 * axis + 2]
                    target = target.narrow(axis + 2, begin, length)
                    source = source.narrow(axis + 2, voxel, 1)
                target.add_(source)
            hidden = torch.relu_(hidden).contiguous(memory_format=memory_format)
            if len(spatial) == 2:
                hidden = F.conv2d(hidden, second.weight, second.bias, padding=1)
            else:
                hidden = F.conv3d(hidden, second.weight, second.bias, padding=1)
            hidden = torch.relu_(hidden)
            # channels last: (n, C, *sp) viewed as (n, *sp, C), one matrix-vector product
            channels_last = hidden.movedim(1, -1)
            outputs.append(torch.matmul(channels_last, w_last).squeeze(-1) + b_last)
        return torch.cat(outputs).view([b, s] + spatial)

    # ------------------------------------------------------------------ inference
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = self._z_params(self.backbone(image))
        alpha = self.tau_concentration()
        tau_mean = alpha / alpha.sum(-1, keepdim=True)  # (R, tau_dim)
        if self.output_mode == "personalized":
            return self._personalized(mu, tau_mean)
        if self.output_mode == "samples":
            raters = torch.arange(self.num_samples, device=image.device) % self.num_raters
            return self._sampled(mu, log_sigma, tau_mean[raters], raters)
        tau = self._prior_tau()
        # eq. 11: z from the encoder of the rater that the classifier names for each prior tau
        prior = self._sampled(mu, log_sigma, tau, self.classifier(tau).argmax(-1))
        if self.output_mode == "prior":
            return prior
        return torch.cat([self._personalized(mu, tau_mean), prior], dim=1)  # "personalized+prior"

    def _personalized(self, mu: torch.Tensor, tau_mean: torch.Tensor) -> torch.Tensor:
        """R outputs: rater r's mean tau with the mean of q(z_r | x)."""
        raters = torch.arange(self.num_raters, device=mu.device)
        return self._predict_inference(self._per_output(mu, raters),
                                       tau_mean.unsqueeze(0).expand(mu.shape[0], -1, -1))

    def _prior_tau(self) -> torch.Tensor:
        """(S, tau_dim) draws of the prior Dir(alpha_0): the fixed buffer, or fresh ones."""
        tau = self.prior_tau
        if self.random_sampling:
            gamma = torch._standard_gamma(torch.full_like(tau, self.prior_concentration))
            tau = gamma / gamma.sum(-1, keepdim=True)
        return tau

    def _sampled(self, mu: torch.Tensor, log_sigma: torch.Tensor, tau: torch.Tensor, raters: torch.Tensor) -> torch.Tensor:
        """S outputs: sample s has tau[s] (S, tau_dim) and its own per-pixel draw of z from q(z_i | x),
        i = raters[s]."""
        z = self._per_output(mu, raters)
        if self.use_z:
            shape = [self.num_samples] + list(z.shape[2:])  # (S, z_channels, *sp), shared by the batch
            if self.random_sampling:
                noise = torch.randn(shape, device=mu.device, dtype=mu.dtype)
            else:
                generator = torch.Generator(device=mu.device)
                generator.manual_seed(self.noise_seed)
                noise = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
            # exp before the expansion over samples: once per encoder, not once per sample
            z = torch.addcmul(z, self._per_output(torch.exp(log_sigma), raters), noise.unsqueeze(0))
        return self._predict_inference(z, tau.unsqueeze(0).expand(mu.shape[0], -1, -1))

    @torch.jit.unused
    def identify_raters(self, tau: torch.Tensor) -> torch.Tensor:
        """The rater the classifier p(r | tau) names for each tau (..., tau_dim) -> (...)."""
        return self.classifier(tau).argmax(-1)

    # ------------------------------------------------------------------ training
    def _recon_target(self, image: torch.Tensor) -> torch.Tensor:
        """The image p(x | z_i) reconstructs: as given, or standardized per image and channel (``recon_target``)."""
        if self.recon_target == "image":
            return image
        axes = tuple(range(2, image.ndim))
        mean, std = image.mean(axes, keepdim=True), image.std(axes, keepdim=True)
        return (image - mean) / std.clamp(min=1e-6)  # a constant image reconstructs as zeros

    def training_objective(
        self, image: torch.Tensor, label: torch.Tensor, rater_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "recon", "classification", "seg", "kl_z", "kl_tau"}`` for a batch: image
        ``(B, C, *sp)``, rater stack ``(B, R, *sp)``, rater mask ``(B, R)`` (None: all present)."""
        label, rater_mask = check_multirater_batch(image, label, rater_mask, self.num_raters)
        b, r = label.shape[:2]
        present = rater_mask.to(image.dtype)  # (B, R)
        n_present = present.sum().clamp(min=1.0)
        mu, log_sigma = self._z_params(self.backbone(image))
        zero = torch.zeros((), device=image.device)

        raters = torch.arange(r, device=image.device)
        if self.use_z:
            mu, log_sigma = self._per_output(mu, raters), self._per_output(log_sigma, raters)  # (B, R, C, *sp)
            posterior_z = Normal(mu, torch.exp(log_sigma))
            # one draw per rater, noise drawn rater-major: with a shared encoder the draws of 0.2.x exactly
            noise = torch.randn([r] + [b] + list(mu.shape[2:]), device=mu.device, dtype=mu.dtype).transpose(0, 1)
            z = mu + torch.exp(log_sigma) * noise
            # KL(q(z_i | x) || N(0, I)) per rater: the mean over z_i's elements, over the present raters
            kl_each = kl_divergence(posterior_z, Normal(torch.zeros_like(mu), torch.ones_like(mu))).flatten(2).mean(-1)
            kl_z = (kl_each * present).sum() / n_present
            decoded = self.image_decoder(z.flatten(0, 1)).view(b, r, self.in_channels, *image.shape[2:])
            recon_each = (decoded - self._recon_target(image).unsqueeze(1)).pow(2).flatten(2).mean(-1)  # (B, R)
            recon = (recon_each * present).sum() / n_present
        else:
            z, kl_z, recon = self._per_output(mu, raters), zero, zero

        if self.use_tau:
            posterior_tau = self.tau_posterior()
            tau = posterior_tau.rsample((b,))  # (B, R, tau_dim)
            kl_tau = kl_divergence(posterior_tau, self.tau_prior()).mean()
            targets = torch.arange(r, device=image.device).expand(b, -1)
            ce = F.cross_entropy(self.classifier(tau).flatten(0, 1), targets.flatten(), reduction="none")
            classification = (ce.view(b, r) * present).sum() / n_present
        else:
            tau, kl_tau, classification = torch.zeros(b, r, self.tau_dim, device=image.device), zero, zero

        logits = self._predict(z, tau)  # (B, R, *sp)
        seg_each = F.binary_cross_entropy_with_logits(logits, label, reduction="none").flatten(2).mean(-1)
        seg = (seg_each * present).sum() / n_present
        w = self.weights
        # eq. 7 divided by the number of pixels: the mask, image and Z terms are sums over pixels in the
        # ELBO (here per-pixel means), the rater terms are one number per rater (divided by the pixels)
        pixels = float(label[0, 0].numel())
        kl_z_weight = w["kl_z"]
        if self.training and self.kl_z_warmup_steps > 0:
            kl_z_weight *= min(1.0, float(self.training_steps + 1) / self.kl_z_warmup_steps)
        if self.training:
            self.training_steps += 1
        loss = (w["recon"] * recon + w["seg"] * seg + kl_z_weight * kl_z
                + (w["classification"] * classification + w["kl_tau"] * kl_tau) / pixels)
        return {"loss": loss, "recon": recon, "classification": classification, "seg": seg,
                "kl_z": kl_z, "kl_tau": kl_tau}
