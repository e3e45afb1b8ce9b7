"""begin_stage2: Stage II starts from the given Stage I checkpoint, with only the heads trainable."""

from __future__ import annotations

import pytest
import torch

from multirater_monai.engines import begin_stage2
from multirater_monai.networks import DPersona

TINY = dict(encoder="small", backbone_channels=(4, 8), feature_channels=4, prior_channels=(4, 8), head_hidden=4,
            projection_hidden=4, num_samples=3, bank_size=5, num_bound_samples=2, num_raters=2)


def test_loads_the_checkpoint_and_freezes_all_but_the_heads(tmp_path):
    torch.manual_seed(0)
    stage1 = DPersona.build(**TINY)
    path = tmp_path / "model_stage1.pt"
    torch.save(stage1.state_dict(), path)
    torch.manual_seed(1)
    net = DPersona.build(**TINY)  # different weights until the checkpoint is loaded
    assert begin_stage2(net, str(path)) is net
    assert net.stage == 2 and net.output_mode == "personalized"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), stage1.state_dict().values()))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("rater_heads.") for n in trainable)


def test_missing_checkpoint_says_why(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model_stage1.pt; Stage I kept no checkpoint: .*val_interval"):
        begin_stage2(DPersona.build(**TINY), str(tmp_path / "model_stage1.pt"))


def test_single_stage_network_is_refused(tmp_path):
    with pytest.raises(TypeError, match="Linear has no start_stage2"):
        begin_stage2(torch.nn.Linear(2, 2), str(tmp_path / "x.pt"))
