"""Resume after a crash: real training runs killed with SIGKILL and run again end where an uninterrupted run ends.

Known answers: on one machine and thread count the bundles are deterministic, so a run killed in its
second epoch (single-stage ``unet_fusion``) or during Stage II (two-stage ``dpersona``) and then run
again with the same command must end with exactly the weights, best model and best-model record of
the run that was never killed. The pieces are checked alone first: the atomic writes (a full disk
during a save leaves the previous file), the random generators' round trip, unreadable state files.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from multirater_monai.engines import load_training_state
from multirater_monai.engines.atomic_checkpoint_saver import AtomicDiskSaver
from multirater_monai.utils.atomic import atomic_torch_save
from multirater_monai.utils.rng_state import capture_rng_state, random_transforms, restore_rng_state

from .bundle_runner import SYNTHETIC, TINY
from .bundle_runner import bundle_ok as _run_ok
from .conftest import REPO_ROOT, threads_per_worker
from .unsafe_pickle import SideEffect


def test_full_disk_during_a_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.ones(3)}, path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write the checkpoint .*model\.pt .*No space left.*previous file there.*is intact.*fix: free disk space"):
        atomic_torch_save({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"], "no temporary file may be left behind"
    assert oct(path.stat().st_mode & 0o777) != oct(0o600), "a checkpoint is an ordinary file, not private to its writer"


def test_best_model_never_vanishes_between_remove_and_save(tmp_path):
    # ignite removes the previous best *before* writing the new one; with a fixed name the file must stay
    saver = AtomicDiskSaver(str(tmp_path), filename="model.pt")
    saver({"model": {"w": torch.ones(2)}}, "model_key_metric=0.5.pt")
    saver.remove("model_key_metric=0.5.pt")
    assert (tmp_path / "model.pt").is_file()
    saver({"model": {"w": torch.full((2,), 2.0)}}, "model_key_metric=0.7.pt")
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["model"]["w"], torch.full((2,), 2.0))
    free = AtomicDiskSaver(str(tmp_path))  # ignite's own names: removing the old one is right
    free({"w": torch.ones(1)}, "epoch_1.pt")
    free.remove("epoch_1.pt")
    assert not (tmp_path / "epoch_1.pt").exists()


def _dataset(num_random: int = 2):
    from monai.data import Dataset
    from monai.transforms import Compose, RandFlipd, RandRotate90d, ScaleIntensityd

    random_ones = [RandFlipd(keys="image", prob=0.5), RandRotate90d(keys="image", prob=0.5)][:num_random]
    return Dataset([{"image": np.zeros((1, 4, 4))}], transform=Compose([ScaleIntensityd(keys="image"), *random_ones]))


def _draw(dataset) -> list:
    transforms = [t for t in random_transforms(dataset) if type(t).__name__ != "Compose"]
    return [torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random(),
            *[t.R.rand(2).tolist() for t in transforms]]


def test_random_generators_round_trip_through_a_weights_only_file(tmp_path):
    dataset = _dataset()
    assert [type(t).__name__ for t in random_transforms(dataset)] == ["Compose", "RandFlipd", "RandRotate90d"]
    for t in random_transforms(dataset):
        t.set_random_state(seed=7)
    atomic_torch_save(capture_rng_state(dataset), tmp_path / "rng.pt")
    first = _draw(dataset)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), dataset)
    assert _draw(dataset) == first
    with pytest.raises(ValueError, match="the training data has 2 random transforms, the saved state 3"):
        restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), _dataset(num_random=1))


def test_unreadable_training_state_names_the_file_and_the_fix(tmp_path):
    good = tmp_path / "good.pt"
    atomic_torch_save({"stage": 1, "trainer": {"epoch": 1}}, good)
    truncated = tmp_path / "training_state.pt"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(RuntimeError, match=r"cannot read the training state .*training_state\.pt .*fix: delete it, or run training with --resume False"):
        load_training_state(str(truncated))
    other = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1)}, other)
    with pytest.raises(RuntimeError, match=r"model\.pt is not a training state written by this project"):
        load_training_state(str(other))


def test_a_state_file_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "training_state.pt"
    torch.save({"stage": 1, "trainer": {"epoch": 1}, "payload": SideEffect(str(marker))}, path)
    with pytest.raises(RuntimeError, match="cannot read the training state"):
        load_training_state(str(path))
    assert not marker.exists(), "weights_only=True must refuse the object, never build it"


# ---- real runs, killed and resumed ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory) -> Path:
    """48 synthetic samples of 32x32 (the suite's usual set is 120 of 64x64): a few iterations per epoch."""
    from multirater_monai.data import prepare_synthetic

    out = tmp_path_factory.mktemp("synthetic_small") / "data"
    prepare_synthetic(out, num_samples=48, num_raters=4, seed=3, size=32)
    return out


def _train_args(bundle: str, root: Path, data: Path, extra: list[str]) -> list[str]:
    return ["run", "training", "--config_file", str(REPO_ROOT / "bundles" / bundle / "configs" / "train.json"),
            "--bundle_root", str(root), "--dataset_dir", str(data), *SYNTHETIC, *TINY[bundle], *extra]


def _kill_when(args: list[str], state_path: Path, ready, timeout: float = 600) -> dict:
    """Start ``monai.bundle *args``, SIGKILL it as soon as ``ready(state)`` holds for its training state."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_worker()), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "monai.bundle", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if state_path.is_file():
                state = torch.load(state_path, weights_only=True)  # written by rename: always whole
                if ready(state):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return state
            assert proc.poll() is None, "the run ended before it could be killed; give it more epochs"
            time.sleep(0.02)
        raise AssertionError("the run never reached the state to kill it in")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _check_resumed_equals_uninterrupted(resumed: Path, uninterrupted: Path, best_names: list[str]) -> None:
    a = load_training_state(str(resumed / "models" / "training_state.pt"))
    b = load_training_state(str(uninterrupted / "models" / "training_state.pt"))
    assert a["trainer"] == b["trainer"] and a["stage"] == b["stage"]
    assert _same_weights(a["network"], b["network"]), "the resumed run must end with the uninterrupted run's weights"
    assert a["extra"]["best_model_saver"] == b["extra"]["best_model_saver"] and a["validator"] == b["validator"]
    for name in best_names:
        best_a = torch.load(resumed / "models" / name, weights_only=True)
        best_b = torch.load(uninterrupted / "models" / name, weights_only=True)
        assert _same_weights(best_a, best_b), f"{name} differs from the uninterrupted run's"


@pytest.mark.slow
def test_single_stage_run_killed_in_epoch_two_resumes_to_the_same_weights(tmp_path, small_synthetic):
    extra = ["--epochs", "5", "--val_interval", "2", "--batch_size", "8"]
    _run_ok(_train_args("unet_fusion", tmp_path / "uninterrupted", small_synthetic, extra))

    root = tmp_path / "killed"
    state_path = root / "models" / "training_state.pt"
    killed_at = _kill_when(_train_args("unet_fusion", root, small_synthetic, extra), state_path,
                           ready=lambda s: s["trainer"]["epoch"] >= 1)
    assert killed_at["trainer"]["epoch"] < 5
    torch.load(state_path, weights_only=True)  # the state on disk is whole after the kill
    out = _run_ok(_train_args("unet_fusion", root, small_synthetic, extra))
    done = load_training_state(str(state_path))["trainer"]["epoch"]
    assert done == 5
    # resumed after the last finished epoch: only the killed epoch is trained again
    assert f"[resume] resuming from {state_path}: stage 1, epoch {killed_at['trainer']['epoch']} of 5 done" in out
    _check_resumed_equals_uninterrupted(root, tmp_path / "uninterrupted", ["model.pt"])

    # --resume False starts afresh and says so; one epoch with val_interval 2 still leaves a best model
    before = (root / "models" / "model.pt").read_bytes()
    fresh = ["--epochs", "1", "--val_interval", "2", "--batch_size", "8", "--resume", "False"]
    out = _run_ok(_train_args("unet_fusion", root, small_synthetic, fresh))
    assert "[resume] --resume False: starting afresh" in out
    state = load_training_state(str(state_path))
    assert state["trainer"]["epoch"] == 1
    assert (root / "models" / "model.pt").read_bytes() != before
    assert _same_weights(torch.load(root / "models" / "model.pt", weights_only=True), state["network"])


@pytest.mark.slow
def test_two_stage_run_killed_in_stage_two_resumes_to_the_same_weights(tmp_path, small_synthetic):
    extra = ["--epochs", "2", "--stage2_epochs", "3", "--val_interval", "1", "--batch_size", "8"]
    _run_ok(_train_args("dpersona", tmp_path / "uninterrupted", small_synthetic, extra))

    root = tmp_path / "killed"
    state_path = root / "models" / "training_state.pt"
    killed_at = _kill_when(_train_args("dpersona", root, small_synthetic, extra), state_path,
                           ready=lambda s: s["stage"] == 2 and s["trainer"]["epoch"] >= 1)
    assert killed_at["trainer"]["epoch"] < 3
    out = _run_ok(_train_args("dpersona", root, small_synthetic, extra))
    assert "[resume] stage 1 finished before" in out
    assert f"stage 2, epoch {killed_at['trainer']['epoch']} of 3 done" in out
    _check_resumed_equals_uninterrupted(root, tmp_path / "uninterrupted", ["model_stage1.pt", "model.pt"])
