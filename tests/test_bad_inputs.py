"""The catalogue of bad inputs (README, "What a bad input gives"): each case, its exact message, nothing half written.

Every case goes through the interface a user touches (the Python API that the bundle configs call:
``load_multirater_datalist``, ``MultiRaterPreprocessing``, ``list_input_images``, ``require_checkpoint``,
``compute_set_metrics``) and must stop with ONE ``MultiRaterDataError`` / ``FileNotFoundError`` /
``RuntimeError`` whose message names the file or argument and the fix. Cases that need a bundle run
(``python -m monai.bundle``) are in test_bundles_common.py (3D volume into a 2D bundle: the message is
the last line of output), test_resume.py (a disk that fills during a checkpoint save; unreadable
training states) and test_datalist.py. ``test_readme_lists_every_case`` keeps the README's table and
this catalogue the same.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from multirater_monai.data import load_multirater_datalist, write_multirater_datalist
from multirater_monai.metrics import compute_set_metrics
from multirater_monai.transforms import MultiRaterPreprocessing
from multirater_monai.utils import MultiRaterDataError, list_input_images, require_checkpoint, require_writable_dir
from multirater_monai.utils.errors import project_error

from .conftest import REPO_ROOT
from .unsafe_pickle import SideEffect

AFFINE = np.eye(4)


def _nii(path: Path, array) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), AFFINE), str(path))
    return str(path)


def _entry(tmp: Path, name: str = "x", labels: list | None = None, image=None) -> dict:
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32) if image is None else image
    img = _nii(tmp / "images" / f"{name}.nii.gz", image)
    if labels is None:
        labels = [np.zeros((16, 16), np.uint8) for _ in range(3)]
    files = [None if lab is None else _nii(tmp / "labels" / f"{name}_r{r}.nii.gz", lab) for r, lab in enumerate(labels)]
    return {"image": img, "label": files}


def _datalist(tmp: Path, entries: list[dict]) -> str:
    return write_multirater_datalist(tmp / "datalist.json", {"training": entries}, num_raters=3)


def _load(tmp: Path, entries: list[dict], num_raters: int = 3):
    return load_multirater_datalist(_datalist(tmp, entries), "training", validate=True, num_raters=num_raters)


def _preprocess(item: dict, num_raters: int = 3):
    return MultiRaterPreprocessing(spatial_dims=2, num_raters=num_raters)(dict(item))


def _network(num_raters: int = 4):
    from multirater_monai.networks import BackboneConfig, MultiHeadUNet

    return MultiHeadUNet.build(backbone=BackboneConfig(channels=[8, 16], strides=[2], num_res_units=1), num_raters=num_raters)


# ------------------------------------------------------------------------------------------------ cases


def missing_image(tmp):
    e = _entry(tmp)
    Path(e["image"]).unlink()
    _load(tmp, [e])


def missing_rater_file(tmp):
    e = _entry(tmp)
    Path(e["label"][1]).unlink()
    _load(tmp, [e])


def corrupt_nifti(tmp):
    e = _entry(tmp)
    Path(e["image"]).write_bytes(Path(e["image"]).read_bytes()[:30])
    _load(tmp, [e])


def label_shape_differs(tmp):
    _load(tmp, [_entry(tmp, labels=[np.zeros((8, 8), np.uint8)] * 3)])


def rater_count_differs(tmp):
    _load(tmp, [_entry(tmp)], num_raters=4)


def every_rater_absent(tmp):
    _load(tmp, [_entry(tmp, labels=[None, None, None])])


def nan_in_image(tmp):
    image = np.zeros((16, 16), np.float32)
    image[3, 4] = np.nan
    _load(tmp, [_entry(tmp, image=image)])


def multiclass_label(tmp):
    _preprocess(_entry(tmp, labels=[(np.arange(256).reshape(16, 16) % 4).astype(np.uint8)] * 3))


def negative_label(tmp):
    _preprocess(_entry(tmp, labels=[-np.ones((16, 16), np.int16)] * 3))


def nan_in_label(tmp):
    lab = np.zeros((16, 16), np.float32)
    lab[0, 0] = np.nan
    _preprocess(_entry(tmp, labels=[lab] * 3))


def empty_training_list(tmp):
    _load(tmp, [])


def malformed_datalist(tmp):
    (tmp / "datalist.json").write_text('{"training": [\n  {"image": "x.nii.gz",, }\n]}')
    load_multirater_datalist(tmp / "datalist.json", "training")


def volume_into_2d_bundle(tmp):
    _preprocess({"image": _nii(tmp / "vol.nii.gz", np.zeros((16, 16, 5), np.float32))})


def unreadable_file_in_input_dir(tmp):
    _nii(tmp / "in" / "a.nii.gz", np.zeros((16, 16), np.float32))
    (tmp / "in" / "b.nii.gz").write_bytes(b"not an image")
    list_input_images(str(tmp / "in"))


def output_folder_not_writable(tmp):
    (tmp / "readonly").write_text("a file where the folder should be")
    require_writable_dir(str(tmp / "readonly" / "predictions"))


def missing_checkpoint(tmp):
    require_checkpoint(str(tmp / "models" / "model.pt"), _network())


def checkpoint_of_another_rater_count(tmp):
    torch.save(_network(num_raters=7).state_dict(), tmp / "model.pt")
    require_checkpoint(str(tmp / "model.pt"), _network())


def checkpoint_of_another_bundle(tmp):
    torch.save({"model": {"prior.weight": torch.zeros(3)}}, tmp / "model.pt")
    require_checkpoint(str(tmp / "model.pt"), _network())


def checkpoint_with_nan_weights(tmp):
    state = _network().state_dict()
    next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(state, tmp / "model.pt")
    require_checkpoint(str(tmp / "model.pt"), _network())


def empty_checkpoint_file(tmp):
    (tmp / "model.pt").write_bytes(b"")
    require_checkpoint(str(tmp / "model.pt"), _network())


def checkpoint_with_pickled_object(tmp):
    torch.save({"model": _network().state_dict(), "x": SideEffect(str(tmp / "executed"))}, tmp / "model.pt")
    try:
        require_checkpoint(str(tmp / "model.pt"), _network())
    finally:
        assert not (tmp / "executed").exists(), "the pickled object must never be built"


def metrics_on_mismatched_shapes(tmp):
    compute_set_metrics(torch.rand(1, 2, 8, 8), torch.ones(1, 3, 8, 9))


def metrics_on_empty_sample_set(tmp):
    compute_set_metrics(torch.rand(1, 0, 8, 8), torch.ones(1, 3, 8, 8))


def metrics_on_nan_predictions(tmp):
    compute_set_metrics(torch.full((1, 2, 8, 8), float("nan")), torch.ones(1, 3, 8, 8))


# case -> (exception type, message pattern: the file or argument, and the fix)
CATALOGUE = {
    missing_image: (MultiRaterDataError, r"image file .*x\.nii\.gz does not exist; fix: correct the path in the datalist"),
    missing_rater_file: (MultiRaterDataError, r"rater 1 label file .*x_r1\.nii\.gz does not exist; fix: .*or set this rater to null"),
    corrupt_nifti: (MultiRaterDataError, r"image file .*x\.nii\.gz cannot be read \(.*\); fix: re-export it as NIfTI"),
    label_shape_differs: (MultiRaterDataError, r"rater 0 label file .*x_r0\.nii\.gz has shape \(8, 8\) but image .* has shape \(16, 16\); fix: resample"),
    rater_count_differs: (MultiRaterDataError, r"has 3 rater entries, expected 4; fix: list one file per rater, null where"),
    every_rater_absent: (MultiRaterDataError, r"no rater annotated this sample \(all null\); fix: drop the entry"),
    nan_in_image: (MultiRaterDataError, r"image file .*x\.nii\.gz contains NaN or infinite values; fix: replace them"),
    multiclass_label: (MultiRaterDataError, r"rater label file .*x_r0\.nii\.gz holds the values \{0, 1, 2, 3\}, not a binary mask; fix: store one binary mask per rater"),
    negative_label: (MultiRaterDataError, r"rater label file .*x_r0\.nii\.gz holds the values \{-1\}, not a binary mask; fix:"),
    nan_in_label: (MultiRaterDataError, r"rater label file .*x_r0\.nii\.gz contains NaN or infinite values; fix: store a binary mask"),
    empty_training_list: (MultiRaterDataError, r"the data set in .*datalist\.json \[training\] is empty \(no entries\); fix:"),
    malformed_datalist: (MultiRaterDataError, r"datalist .*datalist\.json is not valid JSON \(line 2, column 24.*\); fix: repair the file"),
    volume_into_2d_bundle: (MultiRaterDataError, r"vol\.nii\.gz has channel-first shape \(1, 16, 16, 5\), which is not 2D; fix: set spatial_dims=3 or resample/slice"),
    unreadable_file_in_input_dir: (MultiRaterDataError, r"1 of the 2 images of .*in cannot be read as NIfTI: .*b\.nii\.gz .*; fix: replace or remove them \(nothing was written\)"),
    output_folder_not_writable: (MultiRaterDataError, r"output folder .*readonly/predictions is not writable .*; fix: pass --output_dir"),
    missing_checkpoint: (FileNotFoundError, r"checkpoint not found: .*model\.pt; fix: train the bundle into this bundle root first"),
    checkpoint_of_another_rater_count: (RuntimeError, r"the checkpoint .*model\.pt does not fit this configuration's MultiHeadUNet: .* of another size \(e\.g\. .*checkpoint \(7, .*network \(4, .*; fix: pass the overrides it was trained with \(e\.g\. --num_raters 7\)"),
    checkpoint_of_another_bundle: (RuntimeError, r"the checkpoint .*model\.pt does not fit this configuration's MultiHeadUNet: \d+ missing .*1 unexpected \(e\.g\. prior\.weight\).*another bundle"),
    checkpoint_with_nan_weights: (RuntimeError, r"the checkpoint .*model\.pt holds NaN or infinite weights in 1 tensor\(s\) .*diverged; fix: train again"),
    empty_checkpoint_file: (RuntimeError, r"cannot read the checkpoint .*model\.pt \(.*\); a checkpoint must be a file written by torch\.save .*fix:"),
    checkpoint_with_pickled_object: (RuntimeError, r"cannot read the checkpoint .*model\.pt \(UnpicklingError: .*objects are refused, never unpickled"),
    metrics_on_mismatched_shapes: (MultiRaterDataError, r"spatial shape differs"),
    metrics_on_empty_sample_set: (MultiRaterDataError, r"need at least one prediction and one rater, got S=0, R=3"),
    metrics_on_nan_predictions: (MultiRaterDataError, r"pred contains NaN"),
}


@pytest.mark.parametrize("case", list(CATALOGUE), ids=lambda c: c.__name__)
def test_bad_input_stops_with_one_clear_message(case, tmp_path):
    error, pattern = CATALOGUE[case]
    with pytest.raises(Exception) as info:
        case(tmp_path)
    # through MONAI's Compose the error arrives wrapped ("applying transform ..."); what the user sees
    # last (utils.errors.install_error_summary) is the project's own message in the chain
    clear = project_error(info.value) or info.value
    assert isinstance(clear, error), f"{case.__name__}: {type(clear).__name__}: {clear}"
    message = str(clear)
    assert re.search(pattern, message, flags=re.S), f"{case.__name__}: got\n{message}"
    assert "fix" in message or case.__name__.startswith("metrics"), "the message must say how to fix it"


def test_label_of_0_and_255_is_binarised_with_one_warning(tmp_path):
    import multirater_monai.data.array as array

    array._warned_255[0] = False
    lab = np.zeros((16, 16), np.uint8)
    lab[4:8, 4:8] = 255
    with pytest.warns(UserWarning, match=r"x_r0\.nii\.gz holds 0/255: binarised \(255 = foreground\)"):
        out = _preprocess(_entry(tmp_path, labels=[lab] * 3))
    assert set(out["label"].unique().tolist()) == {0.0, 1.0} and float(out["label"][0].sum()) == 16.0


def test_readme_lists_every_case():
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("### What a bad input gives"):]
    for case in CATALOGUE:
        assert f"`{case.__name__}`" in table, f"README's bad-input table lacks {case.__name__}"


def test_a_killed_preparation_leaves_nothing_the_next_run_keeps(tmp_path, capsys):
    import subprocess
    import sys

    from multirater_monai.data import prepare_synthetic

    # a writer that was killed: its process is gone (a finished child's pid), its folder remains
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".data.{int(dead.stdout)}.abcd1234.partial"
    live = tmp_path / f".data.{os.getpid()}.efgh5678.partial"  # a preparation running beside this one
    for folder in (stale, live):
        (folder / "images").mkdir(parents=True)
    prepare_synthetic(tmp_path / "data", num_samples=6, num_raters=2, seed=0, size=16)
    assert not stale.exists() and live.exists()
    assert f"removed {stale}: left by an interrupted run" in capsys.readouterr().out
    assert (tmp_path / "data" / "datalist.json").is_file()
