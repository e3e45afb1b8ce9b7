"""The avap bundle's CPU default (``train.json``) against the paper configuration (``train_paper.json``).

Issue 18, audit finding 3: with one random rater code per sample (the paper, Sec. III-E1) each
rater's code gets about 1/R of step 2's supervision, which the CPU budget's few steps cannot make
up; the CPU default trains every present rater's code at each step (``stage2_raters: "all"``, the
same expected objective). Known answer: after ONE step-2 backward pass on a batch of one image, the
controller's code column of rater r has a gradient for every r under the CPU default, and for
exactly one r (the drawn rater) under the paper configuration.

Audit finding 4: the CPU default normalises ``GAP(F_img)`` (LayerNorm without affine) before the
controller; the paper configuration feeds it as eq. 5 writes it. Known answer: LayerNorm is blind to
a positive scale and a common offset of the pooled vector, so ``3 F + 1`` generates the same kernels
as ``F`` under the CPU default and different ones under the paper configuration.
"""

from __future__ import annotations

import torch

from .bundle_runner import TINY, overrides_dict
from .conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "bundles" / "avap" / "configs"


def _network(*configs: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in configs])
    if configs == ("inference.json",):
        parser.update(overrides_dict(TINY["avap"]))
        return parser.get_parsed_content("network_def")
    parser.update({**overrides_dict(TINY["avap"]), "device": "$torch.device('cpu')", "backbone#encoder": "small"})
    return parser.get_parsed_content("network_def")


def _code_columns_with_gradient(network) -> int:
    torch.manual_seed(0)
    network.start_stage(2)
    network.train()
    raters, size = network.num_raters, 16
    image = torch.randn(1, 1, size, size)
    label = (torch.rand(1, raters, size, size) > 0.5).float()
    network.training_objective(image, label)["loss"].backward()
    grad = network.preference_head.controller.weight.grad.flatten(1)  # (generated, C + R)
    code = grad[:, network.preference_head.in_channels:]
    return int((code.abs().sum(0) > 0).sum())


def test_cpu_default_trains_every_raters_code_each_step():
    network = _network("train.json")
    assert _code_columns_with_gradient(network) == network.num_raters == 4


def test_paper_configuration_draws_one_rater_per_sample():
    network = _network("train.json", "train_paper.json")
    assert _code_columns_with_gradient(network) == 1


def _kernels_blind_to_feature_scale(network) -> bool:
    torch.manual_seed(0)
    channels = network.preference_head.in_channels
    # pooled entries of order 1 (LayerNorm's eps = 1e-5 is then negligible against their variance)
    features = torch.randn(2, channels, 8, 8) + 2 * torch.randn(2, channels, 1, 1)
    codes = network.rater_codes[None].expand(2, network.num_raters, network.num_raters)
    head = network.preference_head
    with torch.no_grad():
        return torch.allclose(head.generate_filters(features, codes), head.generate_filters(3 * features + 1, codes),
                              atol=1e-4)


def test_cpu_default_normalises_the_pooled_features_and_the_paper_configuration_does_not():
    assert _kernels_blind_to_feature_scale(_network("train.json"))
    assert not _kernels_blind_to_feature_scale(_network("train.json", "train_paper.json"))


def test_inference_builds_the_network_that_training_built():
    trained, served = _network("train.json"), _network("inference.json")
    assert served.preference_head.feature_norm == trained.preference_head.feature_norm == "layer"
    assert served.calibration == trained.calibration
    assert served.state_dict().keys() == trained.state_dict().keys()
