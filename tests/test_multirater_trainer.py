"""MultiRaterTrainer: runs training_objective, logs every loss term."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.handlers import StatsHandler, from_engine

from multirater_monai.data import SyntheticMultiRaterDataset
from multirater_monai.engines import MultiRaterTrainer
from multirater_monai.networks import DPersona, BackboneConfig

TERMS = {"loss", "kl", "seg", "bound", "bound_inter", "bound_union", "l2"}


def _net():
    torch.manual_seed(0)
    return DPersona.build(
        num_raters=4, backbone=BackboneConfig(channels=(4, 8, 16), feature_channels=4), prior_channels=(4, 8),
        head_hidden=4, projection_channels=(4,), projection_strides=(2, 1), num_bound_samples=3,
    )


def _trainer(net, drop_mask=False, handlers=None):
    transform = (lambda d: {k: v for k, v in d.items() if k != "rater_mask"}) if drop_mask else None
    data = SyntheticMultiRaterDataset(num_samples=4, size=32, missing_rate=0.3, transform=transform)
    return MultiRaterTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(data, batch_size=2),
        network=net,
        optimizer=torch.optim.Adam(net.parameters_to_train(), lr=1e-3),
        train_handlers=handlers,
    )


def test_two_iterations_log_every_term(capsys):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    stats = StatsHandler(
        name="mr_trainer_test", tag_name="train", output_transform=lambda out: {k: out[0][k] for k in sorted(TERMS)}
    )
    trainer = _trainer(net, handlers=[stats])
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output))
    trainer.run()
    assert trainer.state.iteration == 2 and len(seen) == 2
    for output in seen:  # decollated: one dict per image, the terms as plain floats
        item = output[0]
        assert TERMS <= set(item)
        assert all(isinstance(item[k], float) and item[k] == item[k] for k in TERMS)
    # StatsHandler prints "Epoch: 1/1, Iter: 2/2 -- bound: ... seg: ..." through its own stream handler
    captured = capsys.readouterr()
    logged = [line for line in (captured.out + captured.err).splitlines() if "Iter: 2/2" in line]
    assert logged, captured
    for name in TERMS:
        assert f" {name}: " in logged[-1], logged
    assert from_engine(["loss"], first=True)(trainer.state.output) == seen[-1][0]["loss"]  # bundle idiom
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())  # the optimizer stepped


def test_missing_rater_mask_means_all_present():
    trainer = _trainer(_net(), drop_mask=True)
    trainer.run()
    assert trainer.state.iteration == 2
    assert "bound" in trainer.state.output[0]


def test_network_that_is_not_a_method_is_refused():
    conv = torch.nn.Conv2d(1, 4, 1)
    with pytest.raises(TypeError, match="MultiRaterTrainer trains a MultiRaterMethod .* got Conv2d"):
        MultiRaterTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[], network=conv,
                          optimizer=torch.optim.Adam(conv.parameters()))


def test_loss_terms_handler_logs_every_term_without_a_lambda(capsys):
    from multirater_monai.engines import LossTermsStatsHandler

    handler = LossTermsStatsHandler(name="terms_test", tag_name="train", log_every=2)
    _trainer(_net(), handlers=[handler]).run()
    captured = capsys.readouterr()
    logged = [line for line in (captured.out + captured.err).splitlines() if "Iter: 2/2" in line]
    assert logged and all(f" {name}: " in logged[-1] for name in TERMS), logged
