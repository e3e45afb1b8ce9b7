"""Benchmark: D-Persona training steps (Stage I, Stage II) and inference sampling.

Configurations (docs/DESIGN.md section 6):

* ``paper``: ResNet34-encoder U-Net (FlexibleUNet, 16 feature channels), 128x128, batch 12,
  4 raters, latent 6, K = 10 bound samples, M = 100 bank codes;
* ``small128``: ``DPersona.build`` defaults (``encoder="small"``: MONAI UNet (16, 32, 64, 128)), same sizes;
* ``cpu``: the bundle's CPU default: the small network on the quick data's 64x64 crops, batch 16.

Each (configuration, stage) runs in its own subprocess so that the peak resident set size
(``resource.getrusage``; tracemalloc does not see torch's C++ allocations) belongs to that work
alone; the RSS after building the network and one batch is printed too. A step = training
objective + backward + Adam step on random images and rater stacks; the time is the median of
``--repeats`` steps after one warm-up step. Inference for one 128x128 image: 50 prior samples in
one batched head call (backbone once) vs 50 full forward passes with one sample each, and the 4
personalized outputs of Stage II.

    python benchmarks/bench_dpersona.py [--repeats 5] [--threads 2] [--configs paper cpu]

Targets (2-core CPU): Stage I step <= 2.0 s and <= 2 GB, Stage II step <= 0.5 s, 50 samples
<= 100 ms, 4 personalized outputs <= 60 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "paper": dict(encoder="resnet34", num_raters=4, latent_dim=6, num_bound_samples=10, bank_size=100),
    "small128": dict(encoder="small", num_raters=4, latent_dim=6, num_bound_samples=10, bank_size=100),
    "cpu": dict(encoder="small", num_raters=4, latent_dim=6, num_bound_samples=10, bank_size=100),
}
# (image side, batch) per configuration
WORKLOAD = {"paper": (128, 12), "small128": (128, 12), "cpu": (64, 16)}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(config: str, task: str, repeats: int, threads: int) -> dict:
    import torch

    from multirater_monai.networks import DPersona, BackboneConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    settings = dict(CONFIGS[config])
    net = DPersona.build(backbone=BackboneConfig(encoder=settings.pop("encoder")), **settings)
    result = {"params_M": sum(p.numel() for p in net.parameters()) / 1e6}
    result["head_params_K"] = sum(p.numel() for p in net.rater_heads.parameters()) / 4 / 1e3
    size, batch = WORKLOAD[config]
    image = torch.randn(batch, 1, size, size)
    label = (torch.rand(batch, 4, size, size) > 0.5).float()
    mask = torch.ones(batch, 4, dtype=torch.bool)
    if task in ("stage1", "stage2"):
        if task == "stage2":
            net.start_stage(2)
        optimizer = torch.optim.Adam(net.parameters_to_train(), lr=1e-4)
        result["rss_start_MB"] = _rss_mb()

        def step():
            net.train()
            loss = net.training_objective(image, label, mask)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        result["step_s"] = _median_time(step, repeats)
        result["peak_rss_MB"] = _rss_mb()
    else:  # inference for one image
        one = image[:1]
        net.eval()
        with torch.no_grad():
            result["backbone_ms"] = 1e3 * _median_time(lambda: net.backbone(one), repeats)
            net.set_sampling(num_samples=50)
            result["samples50_batched_ms"] = 1e3 * _median_time(lambda: net(one), repeats)
            net.set_sampling(num_samples=1)
            result["samples50_loop_ms"] = 1e3 * _median_time(lambda: [net(one) for _ in range(50)], max(1, repeats // 2))
            net.start_stage(2)
            net.eval()
            result["personalized4_ms"] = 1e3 * _median_time(lambda: net(one), repeats)
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.repeats, args.threads)))
        return

    import torch

    print("command: python " + " ".join(sys.argv))
    print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"workload: 4 raters, latent 6, K 10, M 100; image side and batch per config {WORKLOAD}; "
          f"inference on one image of that side; median of {args.repeats}\n")
    rows = []
    for config in args.configs:
        res = {}
        for task in ("stage1", "stage2", "inference"):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, task,
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            res[task] = json.loads(out)
        rows.append((config, res))
    print("| config | params (M) | head/rater (K) | Stage I step (s) | Stage I peak RSS (MB) | Stage II step (s) "
          "| Stage II peak RSS (MB) | backbone, 1 image (ms) | 50 samples batched (ms) | 50 full passes (ms) "
          "| 4 personalized (ms) |")
    print("|---" * 11 + "|")
    for config, res in rows:
        s1, s2, inf = res["stage1"], res["stage2"], res["inference"]
        print(f"| {config} | {s1['params_M']:.2f} | {s1['head_params_K']:.1f} | {s1['step_s']:.3f} | "
              f"{s1['peak_rss_MB']:.0f} (start {s1['rss_start_MB']:.0f}) | {s2['step_s']:.3f} | "
              f"{s2['peak_rss_MB']:.0f} (start {s2['rss_start_MB']:.0f}) | {inf['backbone_ms']:.1f} | "
              f"{inf['samples50_batched_ms']:.1f} | {inf['samples50_loop_ms']:.0f} | {inf['personalized4_ms']:.1f} |")


if __name__ == "__main__":
    main()
