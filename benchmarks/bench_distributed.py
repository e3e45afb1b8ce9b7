"""Training throughput (samples per second) of each bundle on 1 and 2 processes, and on the GPUs where present.

Each measurement is the user's own command in a fresh run folder: one process is
``python -m monai.bundle run training --config_file train.json``; N processes are
``torchrun --standalone --nnodes=1 --nproc_per_node=N -m monai.bundle run training --config_file
"['train.json','multi_gpu_train.json']"`` (gloo on the CPU, nccl on GPUs). The data are a synthetic set
(4 raters, ``--size`` x ``--size``); validation runs only once, after the last epoch (``val_interval``
above the epochs), so the epochs time training alone. Throughput = training images per epoch (padded to a
multiple of the process count, as ``DistributedSampler`` does) / median epoch time, epoch 1 left out
(warm-up), read from ignite's "Epoch[k] Complete. Time taken" lines. Two-stage bundles report each stage.

On CPUs the processes share the cores: ``--threads`` is each process's thread count, so 2 processes x 1
thread against 1 process x 2 threads compares the same cores. Start-up (importing torch and MONAI, caching
the data) is not in the figures.

    python benchmarks/bench_distributed.py --bundles unet_fusion --epochs 3
    python benchmarks/bench_distributed.py                          # every bundle, 1 and 2 processes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_dpersona import _cpu_model

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
SYNTHETIC = ["--dataset_name", "synthetic", "--rank_raters_by_area", "False", "--intensity_range", "[0,1]"]
EPOCH_LINE = re.compile(r"MultiRaterTrainer - INFO - Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")
STAGE2_LINE = "[stage 2] from"


def _epoch_seconds(log: str) -> list[list[float]]:
    """Per stage, the epoch times of rank 0 (the first line of each epoch: the ranks wait for each other)."""
    stages: list[list[float]] = []
    for part in log.split(STAGE2_LINE):
        seen: dict[int, float] = {}
        for match in EPOCH_LINE.finditer(part):
            epoch, h, m, s = int(match[1]), int(match[2]), int(match[3]), float(match[4])
            seen.setdefault(epoch, 3600 * h + 60 * m + s)
        stages.append([seen[e] for e in sorted(seen)])
    return stages


def _label(processes: int, device: str) -> str:
    what = "GPU" if device == "cuda" else "process"
    return f"{processes} {what}{'' if processes == 1 else 'es' if what == 'process' else 's'}"


def _two_stage(bundle: str) -> bool:
    return "stage2" in json.loads((REPO / "bundles" / bundle / "configs" / "train.json").read_text())


def _command(bundle: str, processes: int) -> list[str]:
    configs = REPO / "bundles" / bundle / "configs"
    if processes == 1:
        return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(configs / "train.json")]
    files = f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={processes}",
            "-m", "monai.bundle", "run", "training", "--config_file", files]


def _measure(bundle: str, processes: int, devices: str, data: Path, n_train: int, args) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"bench_{bundle}_"))
    extra = ["--bundle_root", str(root), "--dataset_dir", str(data), *SYNTHETIC, "--epochs", str(args.epochs),
             "--val_interval", str(args.epochs + 1), "--batch_size", str(args.batch_size)]
    if _two_stage(bundle):
        extra += ["--stage2_epochs", str(args.epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    if devices == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    proc = subprocess.run([*_command(bundle, processes), *extra], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    shutil.rmtree(root, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{bundle} on {processes} process(es) failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    padded = -(-n_train // processes) * processes
    rates = []
    for times in _epoch_seconds(proc.stdout + proc.stderr):
        timed = times[1:] or times
        rates.append(padded / statistics.median(timed) if timed else float("nan"))
    return {"rates": rates, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=BUNDLES, choices=BUNDLES)
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2], help="process counts on the CPU")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image side of the synthetic set")
    parser.add_argument("--num_samples", type=int, default=120, help="synthetic images (about 70%% train)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()

    import torch

    from multirater_monai.data import prepare_synthetic

    gpus = torch.cuda.device_count()
    print("command: python " + " ".join(sys.argv))
    print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, {gpus} GPU(s)"
          + (f" ({torch.cuda.get_device_name(0)})" if gpus else "")
          + f", torch {torch.__version__}, {args.threads} thread(s) per process, load average {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    data = work / "data"
    prepare_synthetic(data, num_samples=args.num_samples, num_raters=4, seed=3, size=args.size)
    n_train = len(json.loads((data / "datalist.json").read_text())["training"])
    print(f"workload: synthetic {args.size}x{args.size}, 4 raters, {n_train} training images, batch {args.batch_size} "
          f"per process, {args.epochs} epochs per stage (epoch 1 not timed); bundle default networks\n")
    runs = [(p, "cpu") for p in args.processes] + [(p, "cuda") for p in sorted({1, gpus}) if gpus]
    print("| bundle | stage | " + " | ".join(_label(p, d) for p, d in runs) + " |")
    print("|---" * (len(runs) + 2) + "|")
    try:
        for bundle in args.bundles:
            results = [_measure(bundle, p, d, data, n_train, args) for p, d in runs]
            for stage in range(len(results[0]["rates"])):
                cells = [f"{r['rates'][stage]:.1f}/s" if stage < len(r["rates"]) else "-" for r in results]
                print(f"| {bundle} | {stage + 1} | " + " | ".join(cells) + " |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
