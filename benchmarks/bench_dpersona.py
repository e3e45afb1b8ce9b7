"""Benchmark: D-Persona training steps (Stage I, Stage II) part by part, and inference sampling.

Configurations (docs/DESIGN.md section 6):

* ``paper``: ResNet34-encoder U-Net (FlexibleUNet, 16 feature channels), 128x128, batch 12,
  4 raters, latent 6, K = 10 bound samples, M = 100 bank codes (the encoders 16-32-64-128-256);
* ``cpu``: the bundle's CPU default: the small U-Net on the quick data's 64x64 crops, batch 16.

Each (configuration, task) runs in its own subprocess so that the peak resident set size
(``resource.getrusage``; tracemalloc does not see torch's C++ allocations) belongs to that work alone.
A step = training objective + backward + Adam step on random images and rater stacks, timed after
``--warmup`` steps; min / median / max of ``--repeats`` steps. The parts are then timed one by one on
the same batch (each forward + backward where it trains, median of the repeats), so their sum can be
compared with the step:

* Stage I: backbone, prior, posterior, head (1 posterior + K prior codes in one call), loss
  (random-rater Dice + bound loss on the head's logits), L2, optimizer step;
* Stage II: backbone and prior (forward only: frozen), projection heads + attention over the bank,
  head (backward to its input codes only), loss, optimizer step.

The yardstick is the backbone's own forward + backward on the same batch: it costs the same in any
implementation with that backbone, so ``step / backbone`` can be compared across CPU models (issue 18:
the published code's Stage I step is 2.5x its backbone, Stage II 3.6x; goals here: Stage I <= 1.9x,
Stage II <= 0.72x). Inference for one image: the backbone, 50 prior samples in one batched head call,
and the 4 personalized outputs.

    python benchmarks/bench_dpersona.py [--repeats 5] [--warmup 3] [--threads 2] [--configs paper cpu]
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
    "cpu": dict(encoder="small", num_raters=4, latent_dim=6, num_bound_samples=10, bank_size=100),
}
# (image side, batch) per configuration
WORKLOAD = {"paper": (128, 12), "cpu": (64, 16)}
STAGE1_PARTS = ("backbone", "prior", "posterior", "head", "loss", "l2", "optimizer")
STAGE2_PARTS = ("backbone", "prior", "projection", "head", "loss", "optimizer")
GOALS = {"stage1": 1.9, "stage2": 0.72}  # step / backbone forward + backward (issue 18)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB -> MiB


def _times(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _median(fn, repeats: int, warmup: int = 1) -> float:
    return statistics.median(_times(fn, repeats, warmup))


def _stage1_parts(net, image, label, mask, optimizer, repeats):
    """Each Stage I part alone, forward + backward, on the step's inputs."""
    import torch

    from multirater_monai.networks.rater_batch import random_present_rater

    k = net.num_bound_samples
    with torch.no_grad():
        features = net.backbone(image)
        codes = torch.randn(image.shape[0], 1 + k, net.latent_dim)
        logits = net.head(features, codes)

    def backbone():
        net.backbone(image).sum().backward()

    def prior():
        torch.cat(net.prior.encode(image), 1).sum().backward()

    def posterior():
        torch.cat(net.posterior.encode(torch.cat([image, label], 1)), 1).sum().backward()

    def head():
        net.head(features.detach().requires_grad_(), codes.clone().requires_grad_()).sum().backward()

    def loss():
        x = logits.detach().requires_grad_()
        seg = net._losses["seg"](x[:, :1], random_present_rater(label, mask))
        (seg + net.beta * net._losses["bound"](x[:, 1:], label, mask)).backward()

    def l2():
        net.l2_penalty().backward()

    fns = {"backbone": backbone, "prior": prior, "posterior": posterior, "head": head, "loss": loss, "l2": l2,
           "optimizer": optimizer.step}
    return {part: _median(fns[part], repeats) for part in STAGE1_PARTS}


def _stage2_parts(net, image, label, mask, optimizer, repeats):
    import torch

    with torch.no_grad():
        features = net.backbone(image)
        mu, log_sigma = net.prior.encode(image)
        codes = net._personalized_codes(features, mu, log_sigma, net.bank_noise)

    def backbone():
        with torch.no_grad():
            net.backbone(image)

    def prior():
        with torch.no_grad():
            net.prior.encode(image)

    def projection():
        net._personalized_codes(features, mu, log_sigma, torch.randn_like(net.bank_noise)).sum().backward()

    def head():
        net.head(features, codes.clone().requires_grad_()).sum().backward()

    logits = net.head(features, codes).detach()

    def loss():
        x = logits.clone().requires_grad_()
        net._losses["rater_dice"](x, label, mask).sum().backward()

    fns = {"backbone": backbone, "prior": prior, "projection": projection, "head": head, "loss": loss,
           "optimizer": optimizer.step}
    return {part: _median(fns[part], repeats) for part in STAGE2_PARTS}


def worker(config: str, task: str, repeats: int, warmup: int, threads: int) -> dict:
    import torch

    from multirater_monai.networks import BackboneConfig, DPersona

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    settings = dict(CONFIGS[config])
    net = DPersona.build(backbone=BackboneConfig(encoder=settings.pop("encoder")), **settings)
    result = {"params_M": sum(p.numel() for p in net.parameters()) / 1e6,
              "head_params_K": sum(p.numel() for p in net.rater_heads.parameters()) / net.num_raters / 1e3}
    size, batch = WORKLOAD[config]
    image = torch.randn(batch, 1, size, size)
    label = (torch.rand(batch, 4, size, size) > 0.5).float()
    mask = torch.ones(batch, 4, dtype=torch.bool)
    if task in ("stage1", "stage2"):
        if task == "stage2":
            net.start_stage(2)
        net.train()
        optimizer = torch.optim.Adam(net.parameters_to_train(), lr=1e-4)

        def step():
            loss = net.training_objective(image, label, mask)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        times = _times(step, repeats, warmup)
        result["step_s"] = [min(times), statistics.median(times), max(times)]
        result["peak_rss_MiB"] = _peak_rss_mib()
        parts = _stage1_parts if task == "stage1" else _stage2_parts
        result["parts_s"] = parts(net, image, label, mask, optimizer, repeats)
        # the yardstick: the backbone's forward + backward in training mode, same batch
        backbone_params = list(net.backbone.parameters())
        for p in backbone_params:
            p.requires_grad_(True)
        result["backbone_fb_s"] = _median(lambda: net.backbone(image).sum().backward(), repeats, warmup)
    else:  # inference for one image
        one = image[:1]
        net.eval()
        with torch.no_grad():
            result["backbone_ms"] = 1e3 * _median(lambda: net.backbone(one), repeats, warmup)
            net.set_sampling(num_samples=50)
            result["samples50_ms"] = 1e3 * _median(lambda: net(one), repeats, warmup)
            net.start_stage(2)
            net.eval()
            result["personalized4_ms"] = 1e3 * _median(lambda: net(one), repeats, warmup)
        result["peak_rss_MiB"] = _peak_rss_mib()
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


def _run(config: str, task: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, task, "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.repeats, args.warmup, args.threads)))
        return

    import torch

    print("command: python " + " ".join(sys.argv))
    print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"workload: 4 raters, latent 6, K 10, M 100; (image side, batch) per config {WORKLOAD}; "
          f"{args.warmup} warm-up steps, {args.repeats} timed; parts: median\n")
    for config in args.configs:
        res = {task: _run(config, task, args) for task in ("stage1", "stage2", "inference")}
        s1 = res["stage1"]
        print(f"## {config}: {s1['params_M']:.2f} M parameters, {s1['head_params_K']:.2f} K per projection head\n")
        for stage, parts in (("stage1", STAGE1_PARTS), ("stage2", STAGE2_PARTS)):
            r = res[stage]
            yard = r["backbone_fb_s"]
            lo, med, hi = r["step_s"]
            print(f"{'Stage I' if stage == 'stage1' else 'Stage II'}: step min / median / max {lo:.3f} / {med:.3f} / "
                  f"{hi:.3f} s; backbone forward + backward {yard:.3f} s; step / backbone {med / yard:.2f}x "
                  + (f"(goal <= {GOALS[stage]}x, paper configuration)" if config == "paper" else "")
                  + f"; peak RSS {r['peak_rss_MiB']:.0f} MiB")
            print("| " + " | ".join(parts) + " | sum of parts | step |")
            print("|---" * (len(parts) + 2) + "|")
            print("| " + " | ".join(f"{1e3 * r['parts_s'][p]:.0f} ms" for p in parts)
                  + f" | {1e3 * sum(r['parts_s'].values()):.0f} ms | {1e3 * med:.0f} ms |\n")
        inf = res["inference"]
        print(f"Inference, one image: backbone {inf['backbone_ms']:.1f} ms, 50 samples {inf['samples50_ms']:.1f} ms, "
              f"4 personalized {inf['personalized4_ms']:.1f} ms; peak RSS {inf['peak_rss_MiB']:.0f} MiB\n")


if __name__ == "__main__":
    main()
