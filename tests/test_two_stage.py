"""begin_stage: a later stage starts from the previous stage's checkpoint, with only its parts trainable."""

from __future__ import annotations

import pytest
import torch

from multirater_monai.engines import begin_stage
from multirater_monai.networks import AVAP, BackboneConfig, DPersona, ProSeg

TINY = dict(backbone=BackboneConfig(channels=(4, 8), feature_channels=4), prior_channels=(4, 8), head_hidden=4,
            projection_channels=(4,), projection_strides=(2, 1), num_samples=3, bank_size=5, num_bound_samples=2, num_raters=2)


def test_loads_the_checkpoint_and_freezes_all_but_the_heads(tmp_path):
    torch.manual_seed(0)
    stage1 = DPersona.build(**TINY)
    path = tmp_path / "model_stage1.pt"
    torch.save(stage1.state_dict(), path)
    torch.manual_seed(1)
    net = DPersona.build(**TINY)  # different weights until the checkpoint is loaded
    assert begin_stage(net, 2, str(path)) is net
    assert net.stage == 2 and net.output_mode == "personalized"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), stage1.state_dict().values()))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("rater_heads.") for n in trainable)


def test_missing_checkpoint_says_why(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model_stage1.pt; stage 1 kept no checkpoint: .*val_interval"):
        begin_stage(DPersona.build(**TINY), 2, str(tmp_path / "model_stage1.pt"))


def test_single_stage_network_is_refused(tmp_path):
    with pytest.raises(TypeError, match="Linear has 1 training stage"):
        begin_stage(torch.nn.Linear(2, 2), 2, str(tmp_path / "x.pt"))
    with pytest.raises(TypeError, match="ProSeg has 1 training stage"):
        begin_stage(ProSeg.build(num_raters=2, backbone=BackboneConfig(channels=(4, 8), feature_channels=4)), 2,
                    str(tmp_path / "x.pt"))


def test_stage_parameters_and_frozen_parts_follow_stage_modules():
    net = AVAP.build(num_raters=2, backbone=BackboneConfig(channels=(4, 8), feature_channels=4), agreement_channels=4)
    heads = {id(p) for p in net.preference_head.parameters()}
    assert {id(p) for p in net.parameters_to_train(2)} == heads
    assert not heads & {id(p) for p in net.parameters_to_train(1)}
    assert net.frozen_module_names() == []
    net.start_stage(2)
    assert net.frozen_module_names() == ["backbone", "agreement_branches"]
    net.train()
    assert not net.backbone.training and not net.agreement_branches.training and net.preference_head.training
    with pytest.raises(ValueError, match="AVAP has 2 stage"):
        net.start_stage(3)
