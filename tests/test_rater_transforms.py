"""Loading rater stacks, ranking raters, and spatial augmentation of image + raters together."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandAffined, RandFlipd, RandRotate90d

from multirater_monai.transforms import MultiRaterPreprocessing
from multirater_monai.data import (
    CheckFinited,
    EnsureSpatialDims,
    LoadRaterStack,
    LoadRaterStackd,
    MultiRaterDataError,
    RankRatersByArea,
    RankRatersByAread,
    find_data_error,
)


def _nii(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """A 4x5 image and three rater files; rater 1 is stored as 0/255 and with a 2 mm grid."""
    img = np.arange(20, dtype=np.float32).reshape(4, 5)
    r0 = np.zeros((4, 5), np.uint8)
    r0[1:3, 1:3] = 1
    r1 = np.zeros((4, 5), np.uint8)
    r1[0, :] = 255
    affine2 = np.diag([2.0, 2.0, 2.0, 1.0])
    return {
        "image": _nii(tmp_path / "img.nii.gz", img),
        "r0": _nii(tmp_path / "r0.nii.gz", r0),
        "r1": _nii(tmp_path / "r1.nii.gz", r1, affine2),
        "wide": _nii(tmp_path / "wide.nii.gz", np.zeros((4, 6), np.uint8)),
        "nan": _nii(tmp_path / "nan.nii.gz", np.where(img > 10, np.nan, img).astype(np.float32)),
        "r0_arr": r0,
        "r1_arr": r1,
    }


def test_load_rater_stack_missing_rater_padding_and_binarising(files):
    load = LoadRaterStackd(num_raters=4)
    d = MultiRaterPreprocessing(spatial_dims=None)({"image": files["image"], "label": [None, files["r1"], files["r0"]]})
    d2 = load({"image": d["image"], "label": [None, files["r1"], files["r0"]]})
    for out in (d, d2):
        stack = out["label"]
        assert out["image"].shape == (1, 4, 5)
        assert torch.equal(stack[0], torch.zeros(4, 5))
        assert torch.equal(stack[1], torch.from_numpy(files["r1_arr"] > 0).float())  # 255 -> 1
        assert torch.equal(stack[2], torch.from_numpy(files["r0_arr"]).float())
        assert stack.dtype == torch.float32
        # meta and affine come from the first *present* rater (r1, 2 mm grid)
        assert stack.meta["filename_or_obj"] == files["r1"]
        assert float(stack.affine[0, 0]) == 2.0
    # raters (missing, r1, r0): num_raters=None keeps 3, num_raters=4 pads one more missing rater
    assert d["label"].shape == (3, 4, 5)
    assert d["rater_mask"].tolist() == [False, True, True]
    assert d2["rater_mask"].tolist() == [False, True, True, False]
    assert d2["label"].shape == (4, 4, 5) and not d2["label"][3].any()


def test_load_rater_stack_errors_name_the_file(files, tmp_path):
    loading = MultiRaterPreprocessing(spatial_dims=None, num_raters=2)
    with pytest.raises(Exception) as info:
        loading({"image": files["image"], "label": [files["r0"], files["wide"]]})
    err = find_data_error(info.value)  # MONAI's Compose wraps it in RuntimeError; the cause is ours
    assert isinstance(err, MultiRaterDataError)
    assert f"rater 1 label file {files['wide']} has spatial shape (4, 6) but image {files['image']} has (4, 5)" in str(err)

    with pytest.raises(Exception) as info:
        loading({"image": str(tmp_path / "gone_img.nii.gz"), "label": [files["r0"]]})
    assert str(find_data_error(info.value)).startswith(f"image file {tmp_path / 'gone_img.nii.gz'} does not exist; fix:")

    missing = str(tmp_path / "gone_r2.nii.gz")
    with pytest.raises(MultiRaterDataError, match=f"rater label file {missing} does not exist.*set this rater to null"):
        LoadRaterStack()([files["r0"], missing])
    with pytest.raises(MultiRaterDataError, match=r"3 rater files given but num_raters=2"):
        LoadRaterStack(num_raters=2)([files["r0"], files["r0"], files["r0"]])
    with pytest.raises(MultiRaterDataError, match=f"no rater annotated this sample for image {files['image']}"):
        LoadRaterStack()([None, None], spatial_shape=(4, 5), image_name=files["image"])
    # without an image, raters must agree with each other
    with pytest.raises(MultiRaterDataError, match=f"{files['wide']} has spatial shape .* but rater file {files['r0']}"):
        LoadRaterStack()([files["r0"], files["wide"]])
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"nope")
    with pytest.raises(MultiRaterDataError, match=f"rater label file {garbage} cannot be read"):
        LoadRaterStack()([str(garbage)])


def test_nan_image_is_refused_naming_the_file(files):
    with pytest.raises(Exception) as info:
        MultiRaterPreprocessing(spatial_dims=None)({"image": files["nan"], "label": [files["r0"]]})
    err = find_data_error(info.value)
    # 9 of the 20 values (11..19) were set to NaN
    assert isinstance(err, MultiRaterDataError)
    assert str(err).startswith(f"image {files['nan']} contains 9 NaN or infinite value(s); fix:")
    ok = {"image": torch.zeros(1, 2, 2)}
    assert CheckFinited()(ok)["image"] is ok["image"]


def test_ensure_spatial_dims_squeezes_only_trailing_singletons():
    assert EnsureSpatialDims(2)(torch.zeros(1, 5, 6, 1)).shape == (1, 5, 6)
    assert EnsureSpatialDims(2)(torch.zeros(1, 5, 6)).shape == (1, 5, 6)
    with pytest.raises(MultiRaterDataError, match=r"shape \(1, 5, 6, 2\), which is not 2D; fix: set spatial_dims=3"):
        EnsureSpatialDims(2)(torch.zeros(1, 5, 6, 2))


def _stack_with_areas(areas):
    stack = torch.zeros(len(areas), 4, 4)
    for r, a in enumerate(areas):
        stack[r].view(-1)[:a] = 1
    return stack


def test_rank_raters_by_area_missing_last_ties_stable():
    # areas 5, 9 (missing: its content must not matter), 2, 5, 1
    stack = _stack_with_areas([5, 9, 2, 5, 1])
    mask = torch.tensor([True, False, True, True, True])
    ranked, ranked_mask, order = RankRatersByArea()(stack, mask)
    # present by area: r4 (1), r2 (2), r0 (5), r3 (5; tie keeps r0 first); then missing r1
    assert order == [4, 2, 0, 3, 1]
    assert ranked_mask.tolist() == [True, True, True, True, False]
    assert ranked.sum((1, 2)).tolist() == [1, 2, 5, 5, 9]
    assert torch.equal(ranked[2], stack[0]) and torch.equal(ranked[3], stack[3])

    d = RankRatersByAread()({"label": stack, "rater_mask": mask, "image": torch.zeros(1, 4, 4)})
    assert d["rater_order"].tolist() == [4, 2, 0, 3, 1]
    assert d["rater_mask"].tolist() == [True, True, True, True, False]
    assert torch.equal(d["label"], ranked)


def test_spatial_augmentations_move_image_and_every_rater_together():
    # image values 0..3; rater r marks image > r, so the raters are nested and all different.
    # after any joint transform (nearest for both), rater r must still equal (image > r).
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 4, (1, 24, 20), generator=g).float()
    image[0, :6, :4] = 3  # an asymmetric corner, so flips and rotations are visible
    label = torch.cat([(image > r).float() for r in range(3)])
    keys = ["image", "label"]
    aug = Compose([
        RandFlipd(keys, prob=1.0, spatial_axis=0),
        RandRotate90d(keys, prob=1.0, max_k=3),
        RandAffined(keys, prob=1.0, rotate_range=0.5, scale_range=0.1, translate_range=2,
                    mode=("nearest", "nearest"), padding_mode="zeros"),
    ]).set_random_state(7)
    out = aug({"image": image.clone(), "label": label.clone(), "rater_mask": torch.ones(3, dtype=torch.bool)})
    moved_image, moved_label = out["image"].as_tensor(), out["label"].as_tensor()
    assert moved_image.shape[1:] == moved_label.shape[1:]
    assert not torch.equal(moved_image, image[:, : moved_image.shape[1], : moved_image.shape[2]])
    for r in range(3):
        assert torch.equal(moved_label[r], (moved_image[0] > r).float()), f"rater {r} moved apart from the image"


def test_cache_dataset_caches_the_loading_so_epochs_read_no_files(files, tmp_path):
    # MONAI's CacheDataset caches up to the first randomizable transform; a Compose counts as one,
    # so the loading steps must not be a Compose or every epoch would re-read every file.
    import shutil

    from monai.data import CacheDataset
    from monai.transforms import Compose, RandFlipd

    folder = tmp_path / "copy"
    folder.mkdir()
    item = {"image": shutil.copy(files["image"], folder), "label": [shutil.copy(files["r0"], folder)]}
    dataset = CacheDataset([item], Compose([MultiRaterPreprocessing(spatial_dims=None, num_raters=1), RandFlipd(["image", "label"], prob=1.0, spatial_axis=0)]),
                           progress=False)
    shutil.rmtree(folder)  # the files are gone: only a cached sample can still be served
    sample = dataset[0]
    assert torch.equal(sample["label"][0], torch.flip(torch.from_numpy(files["r0_arr"]).float(), dims=[0]))
