"""The dynamic filter head (AVAP's APM, eqs. 5-6) against plain convolutions with the same generated weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multirater_monai.networks import DynamicFilterHead


def _head(**kwargs):
    torch.manual_seed(0)
    head = DynamicFilterHead(in_channels=5, code_length=3, hidden_channels=4, out_channels=2, **kwargs)
    for bn in (head.norm1, head.norm2):  # non-trivial BatchNorm statistics, used in eval mode
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
    return head.eval()


def _plain_convolutions(head, features, codes):
    """Eq. 6 one sample and one code at a time with F.conv2d and the controller's weights."""
    layers = head.split_filters(head.generate_filters(features, codes))
    outputs = torch.empty(codes.shape[0], codes.shape[1], head.out_channels, *features.shape[2:])
    for b in range(codes.shape[0]):
        for n in range(codes.shape[1]):
            x = F.conv2d(features[b:b + 1], layers[0][0][b, n], layers[0][1][b, n], padding=1)
            x = head.norm1(torch.relu(x))
            x = F.conv2d(x, layers[1][0][b, n], layers[1][1][b, n], padding=1)
            x = head.norm2(torch.relu(x))
            outputs[b, n] = F.conv2d(x, layers[2][0][b, n], layers[2][1][b, n])[0]
    return outputs


def test_grouped_convolution_equals_per_sample_conv2d():
    head = _head()
    features = torch.randn(3, 5, 9, 11)
    codes = torch.eye(3)[None].expand(3, 3, 3)  # every rater for every image
    with torch.no_grad():
        expected = _plain_convolutions(head, features, codes)
        out = head(features, codes)
    assert out.shape == (3, 3, 2, 9, 11)
    assert torch.allclose(out, expected, atol=1e-5)
    # the three raters' outputs really differ (the kernels depend on the code)
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3


def test_generated_weights_have_the_papers_shapes_and_scale():
    head = _head()
    features, codes = torch.randn(2, 5, 8, 8), torch.eye(3)[None, :1].expand(2, 1, 3)
    raw = head.generate_filters(features, codes)
    layers = head.split_filters(raw)
    assert [tuple(w.shape[2:]) for w, _ in layers] == [(4, 5, 3, 3), (4, 4, 3, 3), (2, 4, 1, 1)]
    assert [tuple(b.shape[2:]) for _, b in layers] == [(4,), (4,), (2,)]
    assert head.num_generated == 4 * 5 * 9 + 4 + 4 * 4 * 9 + 4 + 2 * 4 + 2
    assert torch.allclose(layers[0][0].flatten(), (raw[..., :180] / 45**0.5).flatten(), atol=1e-6)  # fan_in 5 * 9


def test_parameters_grow_with_the_code_length_only():
    small = DynamicFilterHead(16, code_length=4)
    large = DynamicFilterHead(16, code_length=7)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # three more raters: three more input columns of the controller, nothing else
    assert n(large) - n(small) == 3 * small.num_generated


def test_ablations_condition_on_what_they_say():
    features = torch.randn(2, 5, 8, 8)
    codes = torch.eye(3)[None].expand(2, 3, 3)
    with torch.no_grad():
        features_only = _head(use_code=False)(features, codes)
        code_only = _head(use_features=False)
        assert torch.allclose(features_only[:, 0], features_only[:, 2])  # one output whatever the rater
        # with the code only, the kernels of rater r are the same for every image
        params = code_only.generate_filters(features, codes)
        assert torch.allclose(params[0], params[1])
    with pytest.raises(ValueError, match="set use_features or use_code"):
        DynamicFilterHead(5, 3, use_features=False, use_code=False)


def test_wrong_code_length_names_the_fix():
    with pytest.raises(ValueError, match=r"codes must be \(B, N, L\) = \(2, N, 3\), got \[2, 1, 4\]"):
        _head()(torch.randn(2, 5, 8, 8), torch.zeros(2, 1, 4))


def test_gradients_reach_the_controller_through_the_generated_kernels():
    head = _head().train()
    out = head(torch.randn(2, 5, 8, 8), torch.eye(3)[None, :2].expand(2, 2, 3))
    out.square().mean().backward()
    assert head.controller.weight.grad is not None and head.controller.weight.grad.abs().sum() > 0


def test_torchscript_matches_eager():
    head = _head()
    features, codes = torch.randn(2, 5, 8, 8), torch.eye(3)[None].expand(2, 3, 3)
    scripted = torch.jit.script(head)
    with torch.no_grad():
        assert torch.allclose(scripted(features, codes), head(features, codes), atol=1e-6)


def test_layer_norm_of_the_pooled_features_known_answer():
    # C = 2 feature channels, constant maps 1 and 3: GAP = (1, 3); LayerNorm without affine -> (-1, +1)
    # (mean 2, variance 1). Every generated entry = 1 * f0 + 2 * f1 + 10 * code0 + 20 * code1 (no bias):
    # normalised, rater 1 (code 1, 0) gets -1 + 2 + 10 = 11, rater 2 gets -1 + 2 + 20 = 21; as eq. 5 is
    # written (no norm) 1 + 6 + 10 = 17 and 27; "unit" divides (-1, 1) by sqrt(2): -0.7071 + 1.4142 + 10 = 10.7071.
    # Scaling F by 5 leaves the normalised kernels unchanged.
    features = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 3.0)])[None]
    codes = torch.eye(2)[None]
    unit = [10.0 + 0.5**0.5, 20.0 + 0.5**0.5]
    expected = {"layer": ([11.0, 21.0], [11.0, 21.0]), "none": ([17.0, 27.0], [45.0, 55.0]), "unit": (unit, unit)}
    for norm, (plain, scaled) in expected.items():
        head = DynamicFilterHead(in_channels=2, code_length=2, hidden_channels=2, feature_norm=norm)
        with torch.no_grad():
            head.controller.weight.copy_(torch.tensor([1.0, 2.0, 10.0, 20.0]).reshape(1, 4, 1, 1))
            head.controller.bias.zero_()
            for feats, want in ((features, plain), (5 * features, scaled)):
                params = head.generate_filters(feats, codes)  # (1, 2, num_generated): every entry alike
                assert params[0, :, 0].tolist() == pytest.approx(want, abs=1e-3)
                assert torch.allclose(params, params[..., :1].expand_as(params))
    with pytest.raises(ValueError, match="feature_norm must be one of"):
        DynamicFilterHead(in_channels=2, code_length=2, feature_norm="batch")
