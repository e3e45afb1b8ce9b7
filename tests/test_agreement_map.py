"""Agreement map: fraction of outputs marking each pixel."""

import pytest
import torch

from multirater_monai.data import AgreementMap, AgreementMapd


def test_fraction_of_outputs_above_threshold():
    outputs = torch.tensor([[[0.9, 0.2]], [[0.6, 0.4]], [[0.1, 0.7]], [[0.8, 0.5]]])  # (S=4, H=1, W=2)
    # pixel 0: 0.9, 0.6, 0.8 are > 0.5 -> 3/4; pixel 1: only 0.7 -> 1/4 (0.5 itself is not above)
    assert AgreementMap()(outputs).tolist() == [[[0.75, 0.25]]]
    d = AgreementMapd(keys="pred")({"pred": outputs})
    assert d["agreement"].shape == (1, 1, 2) and d["pred"] is outputs


def test_needs_channel_first_outputs():
    with pytest.raises(ValueError, match="channel-first"):
        AgreementMap()(torch.zeros(4, 4))
