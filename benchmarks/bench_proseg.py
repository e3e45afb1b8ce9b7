"""Benchmark: ProSeg training step and inference (personalized outputs, 50 prior samples).

Configurations:

* ``paper``: the bundle's ``train_paper.json`` network (read from it): ResNet34-encoder U-Net
  (FlexibleUNet, 16 feature channels), z 8 channels, tau 8, its predictor width, 128x128, batch 12
  (appendix C.2); ``paper-hidden64``: the same with the predictor and image decoder 64 wide (the
  paper configuration before 0.3.0);
* ``small128``: the bundle's CPU network (MONAI UNet 16-32-64-128, z 4, hidden 16) at 128x128, batch 12;
* ``cpu``: the bundle's CPU default as trained: the small network on 64x64 crops, batch 16.

Each configuration runs in its own subprocess so that the peak resident set size
(``resource.getrusage``) belongs to it alone. A step = ELBO objective (4 raters, one z draw each,
image decoder, classifier) + backward + Adam step on random images and rater stacks; the time is
the median of ``--repeats`` steps after one warm-up step. Inference on one image: the 4
personalized outputs, 50 prior-mode samples (backbone once; the predictor in chunks of a few maps,
channels-last, as ``ProSeg.forward`` runs it), the same 50 samples in one batched predictor call
(ProSeg 0.2.0's inference path, for comparison), and the bundle's inference output (4 personalized
+ 16 prior samples). In the same process and run, D-Persona (Stage I, latent 6, the same backbone)
draws its 50 samples (backbone once, one batched head call): the last column is the ratio of the two
50-sample times (issue 11's goal: at most 4).

    python benchmarks/bench_proseg.py [--repeats 5] [--threads 2] [--configs paper small128 cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from bench_dpersona import _cpu_model, _peak_rss_mib
from bench_dpersona import _median as _median_time

def _paper_settings() -> dict:
    """The network of ``bundles/proseg/configs/train_paper.json`` (encoder, z channels, predictor width)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bundles", "proseg", "configs",
                        "train_paper.json")
    with open(path) as f:
        paper = json.load(f)
    return dict(encoder=paper["backbone#encoder"], z_channels=paper["z_channels"], hidden=paper["network_def#hidden"])


CONFIGS = {
    "paper": _paper_settings(),
    # the paper configuration before 0.3.0 (predictor and image decoder 64 wide): for the cost of the width
    "paper-hidden64": dict(_paper_settings(), hidden=64),
    "small128": dict(encoder="small", z_channels=4, hidden=16),
    "cpu": dict(encoder="small", z_channels=4, hidden=16),
}
WORKLOAD = {"paper": (128, 12), "paper-hidden64": (128, 12), "small128": (128, 12), "cpu": (64, 16)}  # (image side, batch)


def worker(config: str, repeats: int, threads: int) -> dict:
    import torch

    from multirater_monai.networks import BackboneConfig, DPersona, ProSeg

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    settings = dict(CONFIGS[config])
    net = ProSeg.build(num_raters=4, tau_dim=8, backbone=BackboneConfig(encoder=settings.pop("encoder")), **settings)
    result = {"params_M": sum(p.numel() for p in net.parameters()) / 1e6}
    size, batch = WORKLOAD[config]
    image = torch.randn(batch, 1, size, size)
    label = (torch.rand(batch, 4, size, size) > 0.5).float()
    optimizer = torch.optim.Adam(net.parameters_to_train(), lr=1e-4)
    result["rss_start_MiB"] = _peak_rss_mib()

    def step():
        net.train()
        loss = net.training_objective(image, label)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    result["step_s"] = _median_time(step, repeats)
    result["peak_rss_MiB"] = _peak_rss_mib()
    one = image[:1]
    net.eval()
    with torch.no_grad():
        for mode, samples, key in (("personalized", 16, "personalized4_ms"), ("prior", 50, "prior50_ms"),
                                   ("personalized+prior", 16, "bundle_output_ms")):
            net.set_output_mode(mode)
            net.set_sampling(num_samples=samples)
            result[key] = 1e3 * _median_time(lambda: net(one), repeats)
        net.set_output_mode("prior")
        net.set_sampling(num_samples=50)
        net._predict_inference = net._predict  # one batched predictor call, as in 0.2.0
        result["prior50_batched_ms"] = 1e3 * _median_time(lambda: net(one), repeats)
        del net._predict_inference
        torch.manual_seed(0)
        dpersona = DPersona.build(num_raters=4, latent_dim=6, num_bound_samples=10, bank_size=100,
                                  backbone=BackboneConfig(encoder=CONFIGS[config]["encoder"])).eval()
        dpersona.set_sampling(num_samples=50)
        result["dpersona50_ms"] = 1e3 * _median_time(lambda: dpersona(one), repeats)
        result["prior50_again_ms"] = 1e3 * _median_time(lambda: net(one), repeats)  # the same load as D-Persona's
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats, args.threads)))
        return

    import torch

    print("command: python " + " ".join(sys.argv))
    print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"workload: 4 raters, tau 8; image side and batch per config {WORKLOAD}; inference on one image of "
          f"that side; median of {args.repeats}\n")
    print("| config | params (M) | train step (s) | peak RSS (MiB) | 4 personalized (ms) | 50 prior samples (ms) "
          "| 50 prior samples, one batched call (ms) | bundle output, 4 + 16 (ms) | D-Persona 50 samples (ms) "
          "| ProSeg / D-Persona, 50 samples |")
    print("|---" * 10 + "|")
    for config in args.configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", config,
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        prior50 = min(res["prior50_ms"], res["prior50_again_ms"])  # the better of two medians, before and after D-Persona
        print(f"| {config} | {res['params_M']:.2f} | {res['step_s']:.3f} | {res['peak_rss_MiB']:.0f} "
              f"(start {res['rss_start_MiB']:.0f}) | {res['personalized4_ms']:.1f} | {prior50:.1f} | "
              f"{res['prior50_batched_ms']:.1f} | {res['bundle_output_ms']:.1f} | {res['dpersona50_ms']:.1f} | "
              f"{prior50 / res['dpersona50_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
