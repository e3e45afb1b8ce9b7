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


def test_one_map_per_structure_from_structure_major_outputs():
    # K=2 structures of S=2 outputs each: structure 1 = channels 0-1, structure 2 = channels 2-3
    outputs = torch.tensor([[[0.9, 0.2]], [[0.6, 0.4]], [[0.1, 0.7]], [[0.8, 0.5]]])
    # structure 1: pixel 0 both above -> 1, pixel 1 none -> 0; structure 2: pixel 0 one (0.8) -> 0.5, pixel 1 one (0.7)
    assert AgreementMap(num_structures=2)(outputs).tolist() == [[[1.0, 0.0]], [[0.5, 0.5]]]
    assert AgreementMapd(keys="pred", num_structures=2)({"pred": outputs})["agreement"].shape == (2, 1, 2)
    with pytest.raises(ValueError, match="num_structures=3"):
        AgreementMap(num_structures=3)(outputs)
