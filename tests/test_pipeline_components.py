"""The shared bundle components: one preprocessing (invertible), method outputs, saving in the input's geometry,
the backbone settings object and the method interface's output settings."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Invertd

from multirater_monai.networks import BackboneConfig, DPersona, MultiHeadUNet, ProbabilisticUNet
from multirater_monai.transforms import MethodOutputsd, MultiRaterPreprocessing, SaveOutputsd
from multirater_monai.utils.errors import MultiRaterDataError

AFFINE = np.array([[0.5, 0, 0, 1.0], [0, 0.75, 0, 2.0], [0, 0, 3.0, -4.0], [0, 0, 0, 1]])


def _nii(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array), AFFINE), path)
    return str(path)


@pytest.mark.parametrize("shape", [(10, 12, 1), (10, 12), (1, 10, 12)])
def test_preprocessing_loads_every_2d_layout_and_its_inverse_restores_the_file_geometry(tmp_path, shape):
    values = np.arange(120, dtype=np.float32).reshape(shape)
    preprocessing = MultiRaterPreprocessing(spatial_dims=2, intensity_range=[0, 119], spatial_divisor=8)
    item = preprocessing({"image": _nii(tmp_path / "x.nii.gz", values)})
    image = item["image"]
    # channel-first 2D, padded symmetrically from 10 x 12 to 16 x 16 (multiples of 8), windowed to [0, 1]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    assert torch.allclose(image[0, 3:13, 2:14], torch.from_numpy(values.reshape(10, 12) / 119.0))
    padding = torch.ones(16, 16, dtype=torch.bool)
    padding[3:13, 2:14] = False
    assert not image[0][padding].any()  # the padding is zero
    # a 3-channel network output on the padded grid goes back to the file's shape and affine
    pred = image.repeat(3, 1, 1).clone()
    inverted = Invertd("pred", transform=preprocessing, orig_keys="image")({"image": image, "pred": pred})["pred"]
    assert inverted.shape == (3, *shape)
    assert torch.allclose(inverted[0].reshape(10, 12), torch.from_numpy(values.reshape(10, 12) / 119.0))
    assert np.allclose(np.asarray(inverted.affine), AFFINE)


def test_preprocessing_loads_the_rater_stack_on_the_image_grid(tmp_path):
    image = _nii(tmp_path / "img.nii.gz", np.zeros((6, 6, 1), np.float32))
    small = np.zeros((6, 6, 1), np.uint8)
    small[2:4, 2:4] = 1
    big = np.zeros((6, 6, 1), np.uint8)
    big[1:5, 1:5] = 1
    files = [_nii(tmp_path / "big.nii.gz", big), None, _nii(tmp_path / "small.nii.gz", small)]
    item = MultiRaterPreprocessing(num_raters=3, rank_raters_by_area=True, spatial_divisor=4)(
        {"image": image, "label": files})
    assert item["label"].shape == (3, 8, 8)  # padded like the image
    # ranked by area, smallest first, the missing rater last: small (4 px), big (16 px), missing
    assert item["label"].sum((1, 2)).tolist() == [4.0, 16.0, 0.0]
    assert item["rater_mask"].tolist() == [True, True, False]


def test_preprocessing_refuses_a_3d_volume_naming_the_file(tmp_path):
    path = _nii(tmp_path / "vol.nii.gz", np.zeros((6, 6, 4), np.float32))
    with pytest.raises(Exception) as info:
        MultiRaterPreprocessing(spatial_dims=2)({"image": path})
    from multirater_monai.utils.errors import find_data_error

    assert f"{path} has channel-first shape (1, 6, 6, 4), which is not 2D; fix: set spatial_dims=3" in str(
        find_data_error(info.value))


def test_method_outputs_are_the_methods_own_groups():
    torch.manual_seed(0)
    net = DPersona.build(num_raters=3, backbone=BackboneConfig(channels=(4, 8), feature_channels=4), num_samples=5,
                         bank_size=7, output_mode="personalized+samples").eval()
    logits = net(torch.rand(1, 1, 16, 16))[0]
    d = MethodOutputsd("pred", network=net)({"pred": logits})
    assert d["personalized"].shape == (3, 16, 16) and d["samples"].shape == (5, 16, 16)
    assert torch.allclose(d["samples"], torch.sigmoid(logits[3:])) and torch.allclose(d["pred"], torch.sigmoid(logits))
    net.configure_output(output_mode="samples", num_samples=2)
    with pytest.raises(ValueError, match=r"has 8 channels but DPersona in mode 'samples' gives \{'samples': 2\}"):
        MethodOutputsd("pred", network=net)({"pred": logits})
    with pytest.raises(TypeError, match="needs the bundle's MultiRaterMethod network, got Conv2d"):
        MethodOutputsd("pred", network=torch.nn.Conv2d(1, 1, 1))


def test_save_outputs_keeps_the_input_shape_thresholds_masks_and_leaves_no_temporary_file(tmp_path):
    from monai.data import MetaTensor

    meta = {"filename_or_obj": str(tmp_path / "case01.nii.gz"), "original_affine": AFFINE}
    masks = MetaTensor(torch.tensor([[[0.2, 0.5], [0.7, 0.49]]]).repeat(2, 1, 1)[..., None], meta=dict(meta))
    agreement = MetaTensor(torch.full((1, 2, 2, 1), 0.25), meta=dict(meta))
    out = tmp_path / "out"
    SaveOutputsd(["personalized", "agreement", "absent"], str(out), mask_keys=["personalized"])(
        {"personalized": masks, "agreement": agreement})
    saved = nib.load(out / "case01_personalized.nii.gz")
    assert saved.shape == (2, 2, 1, 2) and saved.get_data_dtype() == np.uint8  # input (2, 2, 1), channels last
    assert saved.get_fdata()[..., 0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]  # >= 0.5 is foreground
    one = nib.load(out / "case01_agreement.nii.gz")
    assert one.shape == (2, 2, 1) and np.allclose(one.affine, AFFINE) and one.get_data_dtype() == np.float32
    assert sorted(p.name for p in out.iterdir()) == ["case01_agreement.nii.gz", "case01_personalized.nii.gz"]
    with pytest.raises(MultiRaterDataError, match="output 'x' carries no source file name"):
        SaveOutputsd(["x"], str(out))({"x": torch.zeros(1, 2, 2)})


def test_backbone_config_divisor_and_build():
    assert BackboneConfig().spatial_divisor == 8  # four levels, strides 2, 2, 2
    assert BackboneConfig(channels=[8, 16, 32]).spatial_divisor == 4
    assert BackboneConfig(channels=(8, 16, 32), strides=[2, 3]).spatial_divisor == 6
    assert BackboneConfig(encoder="resnet34").spatial_divisor == 32
    config = BackboneConfig(channels=[8, 16, 32], feature_channels=5)
    assert config.channels == (8, 16, 32)  # JSON lists become tuples
    built = config.build()
    assert built.spatial_divisor == config.spatial_divisor and built(torch.rand(1, 1, 12, 12)).shape == (1, 5, 12, 12)
    with pytest.raises(ValueError, match="encoder must be one of"):
        BackboneConfig(encoder="vgg")


def test_output_settings_through_the_interface():
    net = ProbabilisticUNet.build(num_raters=2, backbone=BackboneConfig(channels=(4, 8), feature_channels=4))
    net.configure_output(num_samples=3)
    assert net.output_groups() == {"samples": 3} and net.eval()(torch.rand(1, 1, 8, 8)).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"output_mode must be one of \('samples',\)"):
        net.configure_output(output_mode="personalized")
    mh = MultiHeadUNet.build(num_raters=2, backbone=BackboneConfig(channels=(4, 8), feature_channels=4))
    with pytest.raises(ValueError, match="MultiHeadUNet draws no samples"):
        mh.configure_output(num_samples=10)
