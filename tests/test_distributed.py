"""Training and evaluation under torchrun: two CPU processes, gloo.

Known answers:

* gathering: with 5 images on 2 ranks, torch's ``DistributedSampler`` gives rank 0 images 0, 2, 4 and
  rank 1 images 1, 3 and image 0 again (padding); a metric whose per-image values are known (Dice of a
  prediction covering k of a rater's 4 pixels is 2k / (k + 4)) must come back as the 5 values in dataset
  order, mean (0 + 0.4 + 2/3 + 6/7 + 1) / 5, not 6 values in rank order;
* DDP over the training objective: one SGD step on two ranks, each with half of a batch, must give both
  ranks the weights of one step on the whole batch in one process (the loss is a batch mean, so the
  averaged gradient is the full-batch gradient); the parameters a stage does not train stay out of the sync
  and unchanged;
* bundle runs (slow): ``torchrun --nproc_per_node=2`` trains unet_fusion and D-Persona (both stages); each rank
  trains ceil(34 / 2) = 17 of the 34 training images per epoch, rank 0 alone writes checkpoints, resume
  state and TensorBoard files, and the distributed evaluation table is byte for byte the single-process one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from multirater_monai.networks.method import MultiRaterMethod

from .bundle_runner import SYNTHETIC, TINY, overrides_dict
from .conftest import REPO_ROOT

WORLD = 2


def _join(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))


# ----------------------------------------------------------------------------- gathering set metrics
def _square_masks(k: int, size: int = 4):
    """A rater marks the 4 pixels of the top row; the prediction covers the first k of them: Dice 2k / (k + 4)."""
    label = torch.zeros(1, size, size)
    label[0, 0, :4] = 1
    pred = torch.zeros(1, size, size)
    pred[0, 0, :k] = 1
    return pred, label


def _gather_checks(rank: int) -> dict:
    from torch.utils.data import DistributedSampler

    from multirater_monai.metrics import DiceMaxMetric, SetMetricsTable
    from multirater_monai.utils.distributed import gather_in_order, gather_rows

    images = list(range(5))
    padded = [int(i) for i in DistributedSampler(images, num_replicas=WORLD, rank=rank, shuffle=False)]
    uneven = [0] if rank == 0 else []  # one image for two ranks: rank 1 has none
    metric, table = DiceMaxMetric(), SetMetricsTable()
    for k in padded:  # one image per call, as small batches
        pred, label = _square_masks(k)
        metric([pred], [label], sample_index=[k])
        table([pred], [label], sample_index=[k])
    rows, indices = gather_rows([torch.tensor([[7.0]])] if uneven else None, uneven)
    return {
        "padded": padded,
        "dice_max": metric.get_buffer()[:, 0].tolist(),
        "dice_max_mean": float(metric.aggregate()),
        "indices": metric.sample_indices,
        "table_dice_max": table.aggregate()["dice_max"],
        "names": gather_in_order([f"image{k}" for k in padded], padded),
        "uneven": [None if rows is None else rows[0][:, 0].tolist(), indices],
    }


def _agreement_item(k: int) -> dict:
    """Image k of a made-up AVAP-style evaluation: 1 structure, 2 raters, 4x4, calibrated and per-rater maps."""
    from monai.data import MetaTensor

    g = torch.Generator().manual_seed(k)
    label = (torch.rand(2, 4, 4, generator=g) > 0.5).float()
    return {"calibrated": MetaTensor(torch.rand(1, 4, 4, generator=g), meta={"filename_or_obj": f"case{k}"}),
            "personalized": torch.rand(2, 4, 4, generator=g), "label": label,
            "rater_mask": torch.tensor([True, k != 1]), "sample_index": k}


def _agreement_table(indices) -> dict:
    """CalibratedPersonalizedSaver (AVAP, CM, MH-UNet evaluations) fed one image per iteration, as an evaluator would."""
    from types import SimpleNamespace

    from multirater_monai.metrics import CalibratedPersonalizedSaver

    saver = CalibratedPersonalizedSaver(num_raters=2, print_table=False)
    engine = SimpleNamespace(state=SimpleNamespace(output=None))
    for k in indices:
        engine.state.output = [_agreement_item(k)]
        saver._update(engine)
    saver._complete(engine)
    return engine.state.set_metrics


def _preparation_checks(rank: int, out_dir: str) -> list:
    """Both ranks ask for the same data set; the (recorded, slowed-down) preparation must run one rank at a time."""
    import time

    import multirater_monai.data as data
    from multirater_monai.engines import ensure_dataset_in_turn

    os.environ["LOCAL_RANK"] = str(rank)  # two processes of one node
    log = Path(out_dir, "preparations.txt")

    def slow_ensure(name, dataset_dir, **options):
        start = time.monotonic()
        time.sleep(0.3)
        with open(log, "a") as f:
            f.write(f"{rank} {start} {time.monotonic()}\n")
        return f"{dataset_dir}/datalist.json"

    data.ensure_dataset = slow_ensure
    return [ensure_dataset_in_turn("synthetic", "/data/x")]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    _join(rank, init_file)
    try:
        result = {"gather": _gather_checks(rank), "ddp": _ddp_checks(rank),
                  "prepared": _preparation_checks(rank, out_dir),
                  "agreement": _agreement_table([0, 2, 4] if rank == 0 else [1, 3, 0])}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """What each of 2 gloo processes found (one spawn for all the checks: each process imports MONAI, seconds)."""
    out = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(_worker, args=(str(out / "process_group"), str(out)), nprocs=WORLD, join=True)
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    results[0]["preparations"] = (out / "preparations.txt").read_text().split("\n")[:-1]
    return results


def test_set_metrics_gather_every_rank_in_dataset_order_without_the_padding(two_ranks):
    ranks = [r["gather"] for r in two_ranks]
    assert ranks[0]["padded"] == [0, 2, 4] and ranks[1]["padded"] == [1, 3, 0], "torch's sampler layout changed"
    expected = [2 * k / (k + 4) for k in range(5)]  # 0, 0.4, 2/3, 6/7, 1
    for result in ranks:  # every rank holds the whole table
        assert result["dice_max"] == pytest.approx(expected, abs=1e-12)
        assert result["indices"] == [0, 1, 2, 3, 4]
        assert result["dice_max_mean"] == pytest.approx(sum(expected) / 5, abs=1e-12)
        assert result["dice_max_mean"] != pytest.approx(sum(expected) / 6, abs=1e-3), "the padded repeat counted"
        assert result["table_dice_max"] == pytest.approx(sum(expected) / 5, abs=1e-12)
        assert result["names"] == [f"image{k}" for k in range(5)]
        assert result["uneven"] == [[7.0], [0]], "a rank without images must still take part and get the rows"


def test_a_data_set_is_prepared_by_one_process_at_a_time_rank_zero_first(two_ranks):
    assert [r["prepared"] for r in two_ranks] == [["/data/x/datalist.json"]] * WORLD
    runs = [line.split() for line in two_ranks[0]["preparations"]]
    assert [int(r[0]) for r in runs] == [0, 1]
    assert float(runs[1][1]) >= float(runs[0][2]), "rank 1 started preparing before rank 0 had finished"


def test_calibrated_personalized_table_of_two_ranks_is_the_single_process_table(two_ranks):
    single = json.loads(json.dumps(_agreement_table(range(5))))  # NaN and floats as the ranks wrote them
    assert [row["image"] for row in single["per_image"]] == [f"case{k}" for k in range(5)]
    for result in two_ranks:
        assert result["agreement"] == single


def test_single_process_metrics_keep_their_order_and_ignore_indices():
    from multirater_monai.metrics import DiceMaxMetric

    metric = DiceMaxMetric()
    for k in (3, 1):
        pred, label = _square_masks(k)
        metric([pred], [label], sample_index=[10 - k])
    assert metric.get_buffer()[:, 0].tolist() == pytest.approx([6 / 7, 0.4])  # call order, as before
    assert metric.sample_indices == [7, 9]
    with pytest.raises(ValueError, match="got 2 sample indices for 1 images"):
        metric([pred], [label], sample_index=[1, 2])


# ----------------------------------------------------------------------------- DDP over the objective
class _TwoStageToy(MultiRaterMethod):
    """y ~ head(backbone(x)); stage 1 trains the backbone, stage 2 only the head (as D-Persona's projection heads)."""

    stage_modules = (("backbone",), ("head",))

    def __init__(self) -> None:
        super().__init__(num_raters=1)
        self.backbone = nn.Linear(3, 2, bias=False)
        self.head = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.backbone.weight.copy_(torch.tensor([[0.5, -1.0, 0.25], [1.0, 0.5, -0.5]]))
            self.head.weight.copy_(torch.tensor([[1.0, -2.0]]))

    def forward(self, image):
        return self.head(self.backbone(image))

    def output_groups(self):
        return {"personalized": 1}

    def training_objective(self, image, label, rater_mask=None):
        if self.stage == 1:  # the head takes no part: DDP must not wait for its gradient
            loss = (self.backbone(image).sum(dim=1, keepdim=True) - label).pow(2).mean()
        else:
            loss = (self(image) - label).pow(2).mean()
        return {"loss": loss}


def _batch():
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [2.0, 0.0, 1.0], [-1.0, 1.0, 1.0]])
    y = torch.tensor([[1.0], [0.0], [2.0], [-1.0]])
    return x, y


def _sgd_steps(network: _TwoStageToy, shards, objective, steps: int = 2) -> None:
    # two steps per stage: DDP reports a parameter whose gradient never came only at the next step
    for stage in (1, 2):
        if stage == 2:
            network.start_stage(2)
        optimizer = torch.optim.SGD(network.parameters_to_train(stage), lr=0.1)
        run = objective(network)
        x, y = shards
        for _ in range(steps):
            optimizer.zero_grad()
            run(x, y, None)["loss"].backward()
            optimizer.step()


def _ddp_checks(rank: int) -> dict:
    from multirater_monai.engines import objective_ddp

    network = _TwoStageToy()
    if rank == 1:  # different initial weights: building the wrapper copies rank 0's
        with torch.no_grad():
            network.backbone.weight.mul_(3.0)
    x, y = _batch()
    synced = {}

    def objective(net):
        ddp = objective_ddp(net, torch.device("cpu"))
        synced[net.stage] = sorted(n for n, p in ddp.module.named_parameters()
                                   if n not in ddp.parameters_to_ignore and p.requires_grad)
        return ddp

    _sgd_steps(network, (x[rank::WORLD], y[rank::WORLD]), objective)
    state = {k: v.tolist() for k, v in network.state_dict().items()}
    return {"state": state, "synced": synced}


def test_ddp_over_the_training_objective_averages_the_stage_parameters_only(two_ranks):
    ranks = [r["ddp"] for r in two_ranks]
    # one process, the whole batch (rank r's shard is x[r::2]; a mean of two equal halves is the full mean)
    single = _TwoStageToy()
    x, y = _batch()
    _sgd_steps(single, (x, y), lambda net: net.training_objective)
    expected = {k: v.tolist() for k, v in single.state_dict().items()}
    for result in ranks:
        assert result["synced"] == {"1": ["method.backbone.weight"], "2": ["method.head.weight"]}
        for key, value in expected.items():
            assert torch.allclose(torch.tensor(result["state"][key]), torch.tensor(value), atol=1e-6), key
    assert ranks[0]["state"] == ranks[1]["state"]
    # stage 1 left the head alone, stage 2 the backbone: the head moved once, from its initial weights
    assert expected["head.weight"] != [[1.0, -2.0]]


def test_distributed_trainer_outside_torchrun_says_how_to_start_it():
    from monai.data import DataLoader

    from multirater_monai.engines import MultiRaterTrainer

    network = _TwoStageToy()
    loader = DataLoader([{"image": torch.zeros(3), "label": torch.zeros(1)}], batch_size=1)
    trainer = MultiRaterTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=network,
                                optimizer=torch.optim.SGD(network.parameters(), lr=0.1), distributed=True)
    with pytest.raises(RuntimeError, match="needs a process group; fix: start the run with torchrun"):
        trainer.run()


def test_rank_zero_handlers_drops_only_the_writers_on_other_ranks(tmp_path, monkeypatch):
    from ignite.handlers import ProgressBar
    from monai.handlers import EarlyStopHandler, StatsHandler, TensorBoardStatsHandler, ValidationHandler

    from multirater_monai.engines import AtomicCheckpointSaver, LossTermsStatsHandler, ResumeCheckpoint
    from multirater_monai.engines import distributed as module
    from multirater_monai.metrics import SetMetricsSaver

    writers = [StatsHandler(), LossTermsStatsHandler(), TensorBoardStatsHandler(log_dir=str(tmp_path)), ProgressBar(),
               AtomicCheckpointSaver(str(tmp_path), {"model": nn.Linear(1, 1)}, save_final=True)]
    kept = [ValidationHandler(interval=1), EarlyStopHandler(patience=1, score_function=lambda e: 0.0),
            ResumeCheckpoint(str(tmp_path / "state.pt")), SetMetricsSaver()]
    handlers = [writers[0], kept[0], writers[1], None, writers[2], kept[1], writers[3], kept[2], writers[4], kept[3]]
    assert module.rank_zero_handlers(handlers) == [h for h in handlers if h is not None]  # rank 0 (or no torchrun)
    monkeypatch.setattr(module, "is_main_process", lambda: False)
    assert module.rank_zero_handlers(handlers) == kept


def test_lint_names_a_tensorboard_handler_built_on_every_rank(tmp_path):
    from .bundle_lint import multi_gpu_problems

    bundle = tmp_path / "unet_fusion"
    (bundle / "configs").mkdir(parents=True)
    source = REPO_ROOT / "bundles" / "unet_fusion" / "configs"
    train = json.loads((source / "train.json").read_text())
    evaluate = json.loads((source / "evaluate.json").read_text())
    overlay = json.loads((source / "multi_gpu_train.json").read_text())
    del overlay["validate#handlers#1#_disabled_"]
    (bundle / "configs" / "multi_gpu_train.json").write_text(json.dumps(overlay))
    (bundle / "configs" / "multi_gpu_evaluate.json").write_text((source / "multi_gpu_evaluate.json").read_text())
    assert multi_gpu_problems(bundle, train, evaluate) == [
        "unet_fusion/configs/multi_gpu_train.json: validate#handlers#1 is a TensorBoardStatsHandler but is not "
        "disabled off rank 0 (only TensorBoard handlers, which open a file when built, are)"
    ]
    (bundle / "configs" / "multi_gpu_evaluate.json").unlink()
    assert "unet_fusion/configs/multi_gpu_evaluate.json is missing (torchrun runs need it)" in \
        multi_gpu_problems(bundle, train, evaluate)


# ----------------------------------------------------------------------------- bundle runs under torchrun
@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory) -> Path:
    """48 synthetic samples of 32x32: 34 training, 7 validation, 7 test images."""
    from multirater_monai.data import prepare_synthetic

    out = tmp_path_factory.mktemp("synthetic_small") / "data"
    prepare_synthetic(out, num_samples=48, num_raters=4, seed=3, size=32)
    return out


def _configs(bundle: str, *names: str) -> str:
    return "[" + ",".join(f"'{REPO_ROOT / 'bundles' / bundle / 'configs' / n}.json'" for n in names) + "]"


def _monai_bundle(args: list[str], processes: int) -> str:
    """``torchrun --nnodes=1 --nproc_per_node=processes -m monai.bundle *args`` (one process: plain python)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    # one thread per process: the same kernels in both runs, so the tables can be compared digit for digit
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([*launcher, "-m", "monai.bundle", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"monai.bundle {' '.join(args[:2])} on {processes} process(es) failed:\n{out[-6000:]}"
    return out


def _train_and_compare(bundle: str, root: Path, data: Path, extra: list[str], stages: int, best: list[str]) -> None:
    common = ["--bundle_root", str(root), "--dataset_dir", str(data), *SYNTHETIC, *TINY[bundle]]
    # each rank gets its own folders, so what rank 1 writes would show
    per_rank = ["--ckpt_dir", "$os.path.join(@bundle_root, 'models_rank' + os.environ['RANK'])",
                "--output_dir", "$os.path.join(@bundle_root, 'eval_rank' + os.environ['RANK'])"]
    out = _monai_bundle(["run", "training", "--config_file", _configs(bundle, "train", "multi_gpu_train"),
                         *common, *extra, *per_rank], processes=2)
    epochs = {1: 1, 2: 1}
    for stage in range(1, stages + 1):
        for rank in range(WORLD):  # 34 training images padded to 2 x 17, batches of 8: 3 iterations per epoch
            assert f"[rank {rank}/2] stage {stage}: trained {17 * epochs[stage]} samples in {3 * epochs[stage]} " \
                   f"iterations up to epoch {epochs[stage]} on cpu" in out, out[-3000:]
    assert sorted(p.name for p in (root / "models_rank0").iterdir()) == sorted([*best, "training_state.pt"])
    assert any((root / "eval_rank0").iterdir()), "rank 0 writes the TensorBoard events"
    assert not (root / "models_rank1").exists() and not (root / "eval_rank1").exists(), "rank 1 must write nothing"

    evaluate = ["--ckpt_dir", str(root / "models_rank0")]
    _monai_bundle(["run", "--config_file", _configs(bundle, "train", "evaluate", "multi_gpu_evaluate"), *common, *evaluate,
                   "--output_dir", str(root / "eval_distributed")], processes=2)
    # the single-process evaluation in this process (no second start-up of torch and MONAI), on one thread as the ranks
    import monai.bundle  # here: the processes spawned above import this module and need not load it

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monai.bundle.run(config_file=[str(REPO_ROOT / "bundles" / bundle / "configs" / f"{n}.json") for n in ("train", "evaluate")],
                         **overrides_dict([*common, *evaluate, "--output_dir", str(root / "eval_single")]))
    finally:
        torch.set_num_threads(threads)
    distributed = json.loads((root / "eval_distributed" / "metrics.json").read_text())
    single = json.loads((root / "eval_single" / "metrics.json").read_text())
    assert len(single["per_image"][single["rows"][0]["setting"]]) == 7, "the test split has 7 images"
    assert distributed == single
    assert (root / "eval_distributed" / "metrics.csv").read_bytes() == (root / "eval_single" / "metrics.csv").read_bytes()


@pytest.mark.slow
def test_unet_fusion_trains_on_two_processes_and_evaluates_as_one(tmp_path, small_synthetic):
    _train_and_compare("unet_fusion", tmp_path, small_synthetic,
                       ["--epochs", "1", "--val_interval", "1", "--batch_size", "8"], stages=1, best=["model.pt"])


@pytest.mark.slow
def test_dpersona_trains_both_stages_on_two_processes_and_evaluates_as_one(tmp_path, small_synthetic):
    _train_and_compare("dpersona", tmp_path, small_synthetic,
                       ["--epochs", "1", "--stage2_epochs", "1", "--val_interval", "1", "--batch_size", "8"],
                       stages=2, best=["model_stage1.pt", "model.pt"])
