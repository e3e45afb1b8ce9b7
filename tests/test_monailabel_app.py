"""The MONAI Label app, end to end: the real server on 127.0.0.1, per-rater masks over HTTP, a training run.

MONAI Label lives in its own environment (scripts/setup_monailabel.sh makes ``.venv-monailabel``; its
requirements would replace the project's torch). The test uses ``$MONAILABEL_PYTHON`` or that
environment, makes it when absent, and skips with the reason when it cannot be made (no registry).

Datastore made here: 3 images (48x48), each rater's label under the rater's tag (``labels/A1/...``),
rater A4 missing on one image. Known answers: the personalized file has one channel per rater
(the bundle's 4 rater names, in order), the single-rater file equals that rater's channel, the
agreement map lies in [0, 1], a generative bundle returns the number of samples asked for, a 3-slice
volume comes back as a 3-slice volume with its affine (2D bundles run slice by slice), and one
training epoch through the train task writes a new checkpoint from a datalist of the tagged labels.
"""

from __future__ import annotations

import email.parser
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from .bundle_runner import SYNTHETIC, TINY, overrides_dict
from .conftest import REPO_ROOT
from .test_bundles_common import _network

pytestmark = pytest.mark.slow
BUNDLES = ("mh_unet", "dpersona")
RATERS = ["A1", "A2", "A3", "A4"]
SHAPE = (48, 48)  # square: the bundles' training augmentation rotates by 90 degrees
START_TIMEOUT_S, REQUEST_TIMEOUT_S = 240, 300
VOLUME_AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.8, 0, 5.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def monailabel_python() -> str:
    python = os.environ.get("MONAILABEL_PYTHON") or str(REPO_ROOT / ".venv-monailabel" / "bin" / "python")
    check = [python, "-c", "import monailabel.app, multirater_monai"]
    if os.path.isfile(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    try:
        proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup_monailabel.sh")], capture_output=True,
                              text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        pytest.skip("scripts/setup_monailabel.sh did not finish in 30 minutes: no MONAI Label environment")
    if proc.returncode != 0:
        pytest.skip(f"the MONAI Label environment cannot be made here (scripts/setup_monailabel.sh failed: "
                    f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]})")
    return proc.stdout.strip().splitlines()[-1]


def _disc(radius: float, centre=(24, 20)) -> np.ndarray:
    r, c = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return (((r - centre[0]) ** 2 + (c - centre[1]) ** 2) < radius**2).astype(np.uint8)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """A MONAI Label datastore folder: images, and ``labels/<rater>/<image>.nii.gz`` per rater."""
    folder = tmp_path_factory.mktemp("studies")
    rng = np.random.default_rng(0)
    for i in range(3):
        image = 0.2 + 0.6 * _disc(8 + i) + 0.05 * rng.random(SHAPE)
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), folder / f"img{i}.nii.gz")
        for k, rater in enumerate(RATERS):
            if rater == "A4" and i == 2:
                continue  # a rater who did not annotate this image
            (folder / "labels" / rater).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(_disc(6 + i + k), np.eye(4)), folder / "labels" / rater / f"img{i}.nii.gz")
    # a 3-slice volume without labels: served slice by slice by the 2D bundles, left out of training
    volume = np.stack([0.2 + 0.6 * _disc(5 + 3 * z) for z in range(3)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, VOLUME_AFFINE), folder / "vol0.nii.gz")
    return folder


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    for name in BUNDLES:
        (folder / name / "models").mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(_network(name).state_dict(), folder / name / "models" / "model.pt")
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(monailabel_python, studies, models_dir, tmp_path_factory):
    port = _free_port()
    overrides = {name: {**overrides_dict(TINY[name]), **overrides_dict(SYNTHETIC[2:])} for name in BUNDLES}
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore",
           "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false"}
    cmd = [monailabel_python, "-m", "monailabel.main", "start_server", "--app", str(REPO_ROOT / "monailabel_app"),
           "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
           "--conf", "models", ",".join(BUNDLES), "--conf", "models_dir", str(models_dir),
           "--conf", "bundle_overrides", json.dumps(overrides)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/info/", timeout=5) as r:
                    info = json.loads(r.read())
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the MONAI Label server did not start ({'exited' if proc.poll() is not None else 'timeout'}):"
                                f"\n{log.read_text()[-5000:]}")
                time.sleep(1)
        yield base, info, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _infer(base: str, model: str, image: str, params: dict, tmp_path: Path) -> tuple[np.ndarray, dict]:
    """POST /infer/<model>?output=all: the returned label file (as an array) and the result JSON."""
    query = urllib.parse.urlencode({"image": image, "output": "all"})
    body = urllib.parse.urlencode({"params": json.dumps(params)}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{base}/infer/{model}?{query}", data=body),
                                timeout=REQUEST_TIMEOUT_S) as r:
        message = email.parser.BytesParser().parsebytes(f"Content-Type: {r.headers['Content-Type']}\r\n\r\n".encode() + r.read())
    parts = {part.get_param("name", header="content-disposition"): part for part in message.get_payload()}
    result = json.loads(parts["params"].get_payload(decode=True))
    path = tmp_path / f"{model}_{len(list(tmp_path.iterdir()))}.nii.gz"
    path.write_bytes(parts["image"].get_payload(decode=True))
    return np.asarray(nib.load(path).dataobj), result


def test_server_lists_an_infer_and_a_train_task_per_bundle(server):
    _, info, _ = server
    assert sorted(info["models"]) == sorted(BUNDLES) and sorted(info["trainers"]) == sorted(BUNDLES)
    assert info["models"]["mh_unet"]["labels"] == {"A1": 1, "A2": 2, "A3": 3, "A4": 4}
    assert "num_samples" in info["models"]["dpersona"]["config"]
    assert "num_samples" not in info["models"]["mh_unet"]["config"]


def test_per_rater_masks_and_agreement_over_http(server, tmp_path):
    base, _, _ = server
    for model in BUNDLES:
        stack, result = _infer(base, model, "img1", {"output": "personalized"}, tmp_path)
        assert stack.shape == (*SHAPE, 4) and set(np.unique(stack)) <= {0, 1}
        assert result["channels"] == RATERS and result["label_names"] == {"A1": 1, "A2": 2, "A3": 3, "A4": 4}
        one, result = _infer(base, model, "img1", {"output": "rater", "rater": "A2"}, tmp_path)
        assert result["rater"] == "A2" and one.shape == SHAPE
        # the untrained networks are deterministic in eval mode: the same request gives the same channel,
        # as label 2 (the task's labels name value 2 "A2")
        np.testing.assert_array_equal(one, 2 * stack[..., 1])
        assert result["label_names"] == {"A2": 2}
        agreement, result = _infer(base, model, "img1", {"output": "agreement"}, tmp_path)
        assert agreement.shape == SHAPE and agreement.dtype == np.float32
        assert 0.0 <= agreement.min() and agreement.max() <= 1.0
    samples, result = _infer(base, "dpersona", "img0", {"output": "samples", "num_samples": 3}, tmp_path)
    assert samples.shape == (*SHAPE, 3) and result["channels"] == ["sample_1", "sample_2", "sample_3"]


def test_a_volume_comes_back_in_its_geometry(server, tmp_path):
    base, _, _ = server
    stack, result = _infer(base, "mh_unet", "vol0", {"output": "personalized"}, tmp_path)
    assert stack.shape == (*SHAPE, 3, 4) and result["channels"] == RATERS
    returned = nib.load(sorted(tmp_path.glob("*.nii.gz"))[-1])
    np.testing.assert_allclose(returned.affine, VOLUME_AFFINE)


def test_one_epoch_through_the_train_task(server, models_dir):
    base, _, _ = server
    checkpoint = models_dir / "mh_unet" / "models" / "model.pt"
    before = checkpoint.stat().st_mtime_ns
    request = urllib.request.Request(f"{base}/train/mh_unet?run_sync=true", data=json.dumps({"max_epochs": 1}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as r:
        result = json.loads(r.read())
    assert result["returncode"] == 0, result
    # 3 images with rater tags: 2 train, 1 validates (the last); A4's missing label is a null entry
    assert (result["training"], result["validation"]) == (2, 1)
    datalist = json.loads(Path(result["datalist"]).read_text())
    assert datalist["validation"][0]["label"][3] is None and datalist["rater_names"] == RATERS
    assert checkpoint.stat().st_mtime_ns > before
    sys.stdout.write(f"[monailabel] 1 epoch of mh_unet in {result['seconds']} s\n")
