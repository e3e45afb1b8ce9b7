"""A bundle trains one epoch through MONAI's CLI on each prepared real-layout fixture: RIGA (RGB, disc + cup,
six annotators) with AVAP; QUBIQ brain-tumor (four MR channels), a folder of volumes and LIDC from DICOM
with unet_fusion."""

from __future__ import annotations

import pytest

from .bundle_runner import TINY, bundle_ok
from .conftest import REPO_ROOT
from .test_data_folder import _npc_like
from .test_data_lidc import _download
from .test_data_riga import _riga
from .test_qubiq_tasks import _release

pytestmark = pytest.mark.slow


def _train(bundle: str, data, root, *overrides: str) -> None:
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    bundle_ok(["run", "training", "--config_file", str(configs / "train.json"), "--bundle_root", str(root),
               "--dataset_dir", str(data), "--rank_raters_by_area", "False", "--epochs", "1", *TINY[bundle], *overrides])
    assert (root / "models" / "model.pt").is_file()


def test_avap_trains_on_rgb_riga(tmp_path):
    from multirater_monai.data.riga import prepare_riga

    src = _riga(tmp_path / "RIGA", {"BinRushed/B1": ("png", 4), "MESSIDOR": ("png", 2), "Magrabia": ("png", 1)})
    # square output: the bundles' random 90-degree rotations need square images (RIGA's default is 256 x 256)
    data = tmp_path / "riga"
    prepare_riga(data, src, image_size=32, val_fraction=0.2, progress=False)
    _train("avap", data, tmp_path / "avap", "--num_raters", "6", "--num_structures", "2", "--in_channels", "3",
           "--intensity_range", "[0,255]", "--stage2_epochs", "1")


def test_unet_fusion_trains_on_four_channel_qubiq_and_folder(tmp_path):
    from multirater_monai.data import prepare_qubiq
    from multirater_monai.data.folder import prepare_folder

    data = tmp_path / "bt"
    prepare_qubiq(_release(tmp_path / "qubiq"), data, task="brain-tumor/task01", split=(0.5, 0.25, 0.25))
    _train("unet_fusion", data, tmp_path / "uf_bt", "--num_raters", "3", "--in_channels", "4", "--intensity_range", "[0,40]")
    data = tmp_path / "npc"
    prepare_folder(data, _npc_like(tmp_path / "vol"), empty_fraction=0.5, split=(0.5, 0.25, 0.25), progress=False)
    _train("unet_fusion", data, tmp_path / "uf_npc", "--num_raters", "3", "--intensity_range", "[0,50]")


def test_unet_fusion_trains_on_lidc_dicom(tmp_path):
    from multirater_monai.data.lidc import prepare_lidc

    root, records = _download(tmp_path / "LIDC-IDRI")
    data = tmp_path / "lidc"
    prepare_lidc(data, root, annotations=records, fold=0, crop_size=32, progress=False)
    _train("unet_fusion", data, tmp_path / "uf_lidc", "--num_raters", "4")
