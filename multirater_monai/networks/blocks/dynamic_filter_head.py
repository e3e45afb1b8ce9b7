"""Dynamic filter head: convolution kernels generated per sample from pooled features and a rater code.

AVAP's annotator-preference module (APM; Guo et al., eqs. 5-6, after DoDNet's task-conditioned
controller). A single convolution layer, the *controller*, reads ``GAP(F) || V`` (the globally
pooled feature map and the one-hot code of rater m) and emits every weight and bias of three
small convolutions (3x3, 3x3, 1x1) that then run on the full feature map:

    w^m = phi(GAP(F) || V_m),     P_m = BN(ReLU(BN(ReLU(F * w1^m)) * w2^m)) * w3^m

Only the controller has learned weights, so adding raters adds one input column per code entry
(``code_length x num_generated``), not a head per rater.

The per-sample convolutions are ONE grouped convolution per layer: the batch is folded into the
channel axis (``(1, B * C, *sp)``) and each sample's generated kernels are its group. N codes per
image (all R raters at inference) share the feature map: the first layer maps each image's C
channels to ``N * hidden`` outputs in the same group, so the features are never copied N times.

Generated kernels are scaled by ``1 / sqrt(fan_in)`` of their layer. This is not a departure from
eq. 5: the controller is linear, so ``c * phi(x; theta) = phi(x; c * theta)`` and the scaled head
spans exactly the kernels of eq. 5; the scale only sets the size of the kernels at initialisation
and how fast Adam moves them. Measured without it (issue 18, the bundle's CPU reference run on
lidc-phantom, one seed): 'Average' 0.839 -> 0.824, Dice_A4 (the liberal rater) 0.876 -> 0.832,
d_pp of the per-rater outputs 0.205 -> 0.174; so it stays.

``feature_norm="layer"`` normalises ``GAP(F)`` (zero mean, unit variance over the C pooled values, no
affine) before the concatenation with the code. Eq. 5 is silent on it; it is a recorded choice
(issue 18, audit finding 4): ``F_img`` is the backbone's raw last convolution, of arbitrary scale, and
with Adam every controller column moves its kernel entries by about the same step, so a pooled
vector of large entries moves the (rater-independent) feature part of the kernels many times faster
than the one-hot code part, and the rater code barely trains. Normalised, both inputs are O(1).
``"unit"`` also divides the normalised vector by sqrt(C): zero mean and unit L2 norm, the norm of the
one-hot code, so that with Adam the sum over the feature columns, sum_j |g_j| (about 0.8 sqrt(C)),
no longer outweighs the one code column by about 0.8 C as it does after ``"layer"``.
``"none"`` feeds ``GAP(F)`` as it is (the literal eq. 5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DynamicFilterHead", "FEATURE_NORMS"]

FEATURE_NORMS = ("none", "layer", "unit")


class DynamicFilterHead(nn.Module):
    """Controller + three dynamic convolutions; see the module docstring.

    Args:
        in_channels: C, channels of the feature map F.
        code_length: L, length of the condition code (the number of raters for a one-hot code).
        hidden_channels: channels of the two dynamic 3x3 layers (DoDNet and AVAP: 8).
        out_channels: outputs per code (one per structure).
        spatial_dims: 2 or 3.
        kernel_size: kernel of the first two dynamic layers (paper: 3).
        use_features: feed ``GAP(F)`` to the controller (Table IV "feature coding").
        use_code: feed the code to the controller (Table IV "task coding"); without it every code
            gives the same output.
        norm: BatchNorm after the ReLU of the first two dynamic layers (eq. 6).
        feature_norm: ``"none"`` (eq. 5 as written), ``"layer"`` (LayerNorm without affine on
            ``GAP(F)`` before the controller) or ``"unit"`` (the same, divided by sqrt(C): unit L2
            norm, like the one-hot code); see the module docstring.

    ``forward(features (B, C, *sp), codes (B, N, L)) -> (B, N, out_channels, *sp)`` logits.
    """

    def __init__(
        self,
        in_channels: int,
        code_length: int,
        hidden_channels: int = 8,
        out_channels: int = 1,
        spatial_dims: int = 2,
        kernel_size: int = 3,
        use_features: bool = True,
        use_code: bool = True,
        norm: bool = True,
        feature_norm: str = "none",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if not (use_features or use_code):
            raise ValueError("the controller needs an input: set use_features or use_code (or both) to True.")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}.")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same-size output), got {kernel_size}.")
        self.in_channels = int(in_channels)
        self.code_length = int(code_length)
        self.hidden_channels = int(hidden_channels)
        self.out_channels = int(out_channels)
        self.spatial_dims = int(spatial_dims)
        self.use_features = bool(use_features)
        self.use_code = bool(use_code)
        self.feature_norm = str(feature_norm)
        # (out, in, kernel) of the three dynamic layers
        self.layer_shapes: list[tuple[int, int, int]] = [
            (self.hidden_channels, self.in_channels, int(kernel_size)),
            (self.hidden_channels, self.hidden_channels, int(kernel_size)),
            (self.out_channels, self.hidden_channels, 1),
        ]
        self.layer_weight_sizes: list[int] = [cout * cin * k**spatial_dims for cout, cin, k in self.layer_shapes]
        self.layer_scales: list[float] = [1.0 / math.sqrt(cin * k**spatial_dims) for _, cin, k in self.layer_shapes]
        self.num_generated = sum(n + cout for n, (cout, _, _) in zip(self.layer_weight_sizes, self.layer_shapes))
        controller_in = self.in_channels * int(use_features) + self.code_length * int(use_code)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.controller = conv(controller_in, self.num_generated, kernel_size=1)
        bn = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
        self.norm1 = bn(self.hidden_channels) if norm else nn.Identity()
        self.norm2 = bn(self.hidden_channels) if norm else nn.Identity()

    def generate_filters(self, features: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Eq. 5: the controller's output, ``(B, N, num_generated)`` (all kernels and biases of one code)."""
        batch, n_codes = codes.shape[0], codes.shape[1]
        inputs: list[torch.Tensor] = []
        if self.use_features:
            pooled = features.flatten(2).mean(dim=2)  # GAP(F): (B, C)
            if self.feature_norm != "none":
                pooled = F.layer_norm(pooled, [self.in_channels])
            if self.feature_norm == "unit":
                pooled = pooled / math.sqrt(self.in_channels)
            inputs.append(pooled[:, None, :].expand(batch, n_codes, self.in_channels))
        if self.use_code:
            inputs.append(codes.to(features.dtype))
        x = torch.cat(inputs, dim=2).reshape([batch * n_codes, -1] + [1] * self.spatial_dims)
        return self.controller(x).reshape(batch, n_codes, self.num_generated)

    def split_filters(self, params: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(B, N, num_generated)`` -> per layer ``(weight (B, N, out, in, *k), bias (B, N, out))``, scaled."""
        batch, n_codes = params.shape[0], params.shape[1]
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        start = 0
        for i in range(len(self.layer_shapes)):
            cout, cin, k = self.layer_shapes[i]
            n_weight, scale = self.layer_weight_sizes[i], self.layer_scales[i]
            weight = params[:, :, start:start + n_weight] * scale
            weight = weight.reshape([batch, n_codes, cout, cin] + [k] * self.spatial_dims)
            start += n_weight
            bias = params[:, :, start:start + cout]
            start += cout
            layers.append((weight, bias))
        return layers

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, padding: int) -> torch.Tensor:
        if self.spatial_dims == 3:
            return F.conv3d(x, weight, bias, padding=padding, groups=groups)
        return F.conv2d(x, weight, bias, padding=padding, groups=groups)

    def forward(self, features: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 3 or codes.shape[0] != features.shape[0] or codes.shape[2] != self.code_length:
            raise ValueError(
                f"codes must be (B, N, L) = ({features.shape[0]}, N, {self.code_length}), got {list(codes.shape)}; "
                "fix: one code of the controller's code_length per output, e.g. one-hot rater codes."
            )
        if features.shape[1] != self.in_channels:
            raise ValueError(f"features have {features.shape[1]} channels, the head was built for {self.in_channels}.")
        batch, n_codes = codes.shape[0], codes.shape[1]
        spatial = features.shape[2:]
        layers = self.split_filters(self.generate_filters(features, codes))
        kernel_dims = [int(s) for s in layers[0][0].shape[4:]]
        # layer 1: group b maps image b's C channels to its N codes' hidden channels at once
        w, b = layers[0]
        x = features.reshape([1, batch * self.in_channels] + list(spatial))
        x = self._conv(x, w.reshape([batch * n_codes * self.hidden_channels, self.in_channels] + kernel_dims),
                       b.reshape(-1), batch, kernel_dims[0] // 2)
        x = self.norm1(torch.relu(x.reshape([batch * n_codes, self.hidden_channels] + list(spatial))))
        # layers 2 and 3: one group per (image, code)
        w, b = layers[1]
        x = self._conv(x.reshape([1, batch * n_codes * self.hidden_channels] + list(spatial)),
                       w.reshape([batch * n_codes * self.hidden_channels, self.hidden_channels] + kernel_dims),
                       b.reshape(-1), batch * n_codes, kernel_dims[0] // 2)
        x = self.norm2(torch.relu(x.reshape([batch * n_codes, self.hidden_channels] + list(spatial))))
        w, b = layers[2]
        x = self._conv(x.reshape([1, batch * n_codes * self.hidden_channels] + list(spatial)),
                       w.reshape([batch * n_codes * self.out_channels, self.hidden_channels] + [1] * self.spatial_dims),
                       b.reshape(-1), batch * n_codes, 0)
        return x.reshape([batch, n_codes, self.out_channels] + list(spatial))
