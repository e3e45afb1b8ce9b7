"""The avap bundle's CPU default (``train.json``) against the paper configuration (``train_paper.json``).

Issue 18, audit finding 3: with one random rater code per sample (the paper, Sec. III-E1) each
rater's code gets about 1/R of step 2's supervision, which the CPU budget's few steps cannot make
up; the CPU default trains every present rater's code at each step (``stage2_raters: "all"``, the
same expected objective). Known answer: after ONE step-2 backward pass on a batch of one image, the
controller's code column of rater r has a gradient for every r under the CPU default, and for
exactly one r (the drawn rater) under the paper configuration.
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
