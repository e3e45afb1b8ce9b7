"""TAB and PADL with two structures (K = 2, R = 3): the loss by hand per structure (summed), absent raters per
structure, the outputs' order (structure-major) and draws by hand, PADL as two one-structure PADLs with copied
weights, split_outputs per structure, the channel names and TorchScript."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multirater_monai.networks import PADL, TAB, BackboneConfig
from multirater_monai.networks.blocks import tiled_pixel_noise
from multirater_monai.networks.channel_names import output_channel_names
from multirater_monai.utils.errors import MultiRaterDataError

SMALL = BackboneConfig(channels=(8, 16, 32), feature_channels=8)
K, R, S = 2, 3, 5


def _tab(**kwargs) -> TAB:
    torch.manual_seed(0)
    return TAB.build(**{"num_raters": R, "num_structures": K, "backbone": SMALL, "embed_dim": 16, "num_samples": S,
                        **kwargs})


def _padl(num_structures: int = K, **kwargs) -> PADL:
    torch.manual_seed(0)
    return PADL.build(**{"num_raters": R, "num_structures": num_structures, "backbone": SMALL, "num_samples": S,
                         **kwargs})


def _batch(channels: int = K * R, size: int = 16):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 1, size, size, generator=g),
            (torch.rand(2, channels, size, size, generator=g) > 0.5).float())


def _fix_gaussians(net, mean: torch.Tensor) -> None:
    """The predicted Gaussians replaced by ``mean`` (B, K (R + 1), H, W) with a tiny sigma: the draws are the means."""
    sigma = torch.full_like(mean, 1e-6)
    if isinstance(net, TAB):
        factors = torch.zeros(*mean.shape[:2], net.rank, *mean.shape[2:])
        net.query_gaussians = lambda features: (mean, sigma, factors)
    else:
        net.gaussians = lambda features: (mean, sigma)


@pytest.mark.parametrize("make", [_tab, _padl], ids=["tab", "padl"])
def test_loss_by_hand_per_structure_summed_with_absent_raters(make):
    """Channel k (R + 1) is structure k's consensus, k (R + 1) + 1 + r its rater r; label channel k R + r is
    structure k's rater r. Per structure: mean over its present (image, rater) pairs; the two structures summed."""
    net = make(rater_weight=1.0)
    image, label = _batch()
    g = torch.Generator().manual_seed(5)
    mean = 3 * torch.randn(2, K * (R + 1), 16, 16, generator=g)
    _fix_gaussians(net, mean)
    # structure 1: 4 present pairs; structure 2: 3 present pairs (other raters absent there)
    mask = torch.tensor([[True, False, True, False, False, True],
                         [False, True, True, True, True, False]])
    consensus = rater = 0.0
    for k in range(K):
        pairs = [(b, r) for b in range(2) for r in range(R) if mask[b, k * R + r]]
        consensus += sum(F.binary_cross_entropy_with_logits(mean[b, k * (R + 1)], label[b, k * R + r])
                         for b, r in pairs) / len(pairs)
        rater += sum(F.binary_cross_entropy_with_logits(mean[b, k * (R + 1) + 1 + r], label[b, k * R + r])
                     for b, r in pairs) / len(pairs)
    terms = net.training_objective(image, label, mask)
    first = "consensus" if isinstance(net, TAB) else "global"
    assert terms[first].item() == pytest.approx(consensus.item(), rel=1e-4)
    assert terms["rater"].item() == pytest.approx(rater.item(), rel=1e-4)
    assert terms["loss"].item() == pytest.approx((consensus + rater).item(), rel=1e-4)
    # an absent (structure, rater)'s garbage mask changes nothing
    garbage = label.clone()
    garbage[0, 3], garbage[1, 5] = 1 - garbage[0, 3], 1 - garbage[1, 5]
    assert net.training_objective(image, garbage, mask)["loss"].item() == pytest.approx(terms["loss"].item(), rel=1e-6)
    # logits 0: ln 2 per term and structure, summed: 2 terms x 2 structures
    _fix_gaussians(net, torch.zeros_like(mean))
    assert net.training_objective(image, label)["loss"].item() == pytest.approx(4 * math.log(2), rel=1e-5)
    # a structure no rater annotated adds 0: only structure 2 left, 2 ln 2
    only_second = torch.tensor([[False] * R + [True] * R] * 2)
    assert net.training_objective(image, label, only_second)["loss"].item() == pytest.approx(2 * math.log(2), rel=1e-5)


def test_k2_loss_is_the_sum_of_two_one_structure_losses():
    """TAB with K = 2 on the stack [structure 1 | structure 2] = TAB (K = 1) on each structure, summed."""
    net, single = _tab(rater_weight=0.5), _tab(num_structures=1, rater_weight=0.5)
    image, label = _batch()
    g = torch.Generator().manual_seed(7)
    mean = 2 * torch.randn(2, K * (R + 1), 16, 16, generator=g)
    mask = torch.tensor([[True, True, False], [True, False, True]])  # (B, R): the same raters for both structures
    _fix_gaussians(net, mean)
    both = net.training_objective(image, label, mask)["loss"]
    parts = []
    for k in range(K):
        _fix_gaussians(single, mean[:, k * (R + 1):(k + 1) * (R + 1)])
        parts.append(single.training_objective(image, label[:, k * R:(k + 1) * R], mask)["loss"])
    assert both.item() == pytest.approx(sum(parts).item(), rel=1e-5)


def test_tab_outputs_are_structure_major_and_draws_by_hand():
    net = _tab(output_mode="personalized+consensus+samples").eval()
    assert net.queries.shape == (K * (R + 1), 16) and net.rank == R + 1
    image, _ = _batch()
    with torch.no_grad():
        mean, sigma, factors = net.query_gaussians(net.backbone(image))
        out = net(image)
    assert net.output_groups() == {"personalized": K * R, "consensus": K, "samples": K * S}
    assert out.shape == (2, K * R + K + K * S, 16, 16)
    noise = tiled_pixel_noise(net.pixel_noise, 16, 16)
    for k in range(K):
        c = k * (R + 1)
        torch.testing.assert_close(out[:, k * R:(k + 1) * R], mean[:, c + 1:c + 1 + R])
        torch.testing.assert_close(out[:, K * R + k], mean[:, c])
        for s in range(S):  # structure k's draw s: mu + sigma * pixel_noise[s] + sum_j U_j * factor_noise[s, j]
            by_hand = mean[:, c] + sigma[:, c] * noise[s] + torch.einsum("bjhw,j->bhw", factors[:, c], net.factor_noise[s])
            torch.testing.assert_close(out[:, K * R + K + k * S + s], by_hand)


def test_padl_is_two_one_structure_padls_with_copied_weights():
    """Global head rows [mu_1, mu_2, s_1, s_2], rater rows [dmu (K R), ds (K R)]: structure k's rows copied into a
    one-structure PADL on the same backbone give exactly structure k's outputs (all three groups)."""
    net = _padl(output_mode="personalized+consensus+samples").eval()
    image, _ = _batch()
    with torch.no_grad():
        out = net(image)
        for k in range(K):
            single = _padl(num_structures=1, output_mode="personalized+consensus+samples").eval()
            single.backbone.load_state_dict(net.backbone.state_dict())
            rows = [k, K + k]
            single.global_head.weight.copy_(net.global_head.weight[rows])
            single.global_head.bias.copy_(net.global_head.bias[rows])
            rows = list(range(k * R, (k + 1) * R)) + list(range(K * R + k * R, K * R + (k + 1) * R))
            single.rater_heads.weight.copy_(net.rater_heads.weight[rows])
            single.rater_heads.bias.copy_(net.rater_heads.bias[rows])
            alone = single(image)
            torch.testing.assert_close(out[:, k * R:(k + 1) * R], alone[:, :R])
            torch.testing.assert_close(out[:, K * R + k], alone[:, R])
            torch.testing.assert_close(out[:, K * R + K + k * S:K * R + K + (k + 1) * S], alone[:, R + 1:])


@pytest.mark.parametrize("make", [_tab, _padl], ids=["tab", "padl"])
def test_split_outputs_and_channel_names_per_structure(make):
    net = make().eval()
    image, _ = _batch()
    net.set_output_mode("personalized+consensus+samples")
    with torch.no_grad():
        out = net(image)[0]
    parts = net.split_outputs(out)
    assert parts["personalized"].shape == (K * R, 16, 16) and parts["samples"].shape == (K * S, 16, 16)
    assert torch.equal(parts["calibrated"], parts["consensus"]) and parts["calibrated"].shape == (K, 16, 16)
    net.set_output_mode("personalized")  # calibrated: per structure the mean of its raters
    alone = net.split_outputs(out[:K * R])
    by_hand = torch.stack([torch.sigmoid(out[k * R:(k + 1) * R]).mean(0) for k in range(K)])
    torch.testing.assert_close(alone["calibrated"], by_hand)
    net.set_output_mode("consensus")  # every rater of structure k gets structure k's consensus
    alone = net.split_outputs(out[K * R:K * R + K])
    assert all(torch.equal(alone["personalized"][k * R + r], alone["consensus"][k]) for k in range(K) for r in range(R))
    net.set_output_mode("personalized+consensus+samples")
    names = [n for n, _ in output_channel_names(net, ["A1", "A2", "A3"])]
    assert names[:K * R + K] == ["s1_A1", "s1_A2", "s1_A3", "s2_A1", "s2_A2", "s2_A3", "s1_consensus", "s2_consensus"]
    assert names[K * R + K:] == [f"s{k + 1}_sample_{i + 1}" for k in range(K) for i in range(S)]


@pytest.mark.parametrize("make", [_tab, _padl], ids=["tab", "padl"])
def test_torchscript_and_batch_errors_with_two_structures(make):
    net = make(output_mode="personalized+consensus+samples").eval()
    image, label = _batch()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(image), net(image))
    with pytest.raises(MultiRaterDataError, match="num_structures=2"):
        net.training_objective(image, label[:, :R])
    with pytest.raises(MultiRaterDataError, match="rater_mask"):
        net.training_objective(image, label, torch.ones(2, 4, dtype=torch.bool))
