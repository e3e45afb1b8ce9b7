"""Peak memory of a bundle's inference and evaluation against the number of images (issue 16, item 4).

Each measurement is a fresh process that runs the bundle through MONAI's own runner
(``monai.bundle.run``: ``inference.json`` on a folder of N images; ``train.json + evaluate.json`` on a
datalist whose test section holds N images) and reports its peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``). Memory that stays flat in N means nothing is kept per batch;
growth per image is printed. The network is the bundle's CPU default with random weights (memory
does not depend on training); the images are synthetic 64x64 slices with 4 raters, repeated.

    python benchmarks/bench_memory.py                        # unet_fusion, N = 100, 300, 1000
    python benchmarks/bench_memory.py --bundle dpersona --sizes 100 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = {"dataset_name": "synthetic", "rank_raters_by_area": False, "intensity_range": [0, 1]}


def _prepare(work: Path, bundle: str) -> dict:
    """Synthetic data, a datalist per N, an input folder per N, and a random-weight checkpoint."""
    import torch
    from monai.bundle import ConfigParser

    from multirater_monai.data import load_multirater_datalist, prepare_synthetic

    data = work / "data"
    prepare_synthetic(data, num_samples=60, num_raters=4, seed=0, size=64)
    entries = load_multirater_datalist(data / "datalist.json", "test")
    train = load_multirater_datalist(data / "datalist.json", "training")
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(work / "root"), "dataset_dir": str(data), **SYNTHETIC})
    network = parser.get_parsed_content("network_def")
    (work / "root" / "models").mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), work / "root" / "models" / "model.pt")
    (work / "root" / "models" / "model_stage1.pt").write_bytes((work / "root" / "models" / "model.pt").read_bytes())
    return {"data": data, "entries": entries, "train": train}


def _inputs_for(work: Path, prepared: dict, n: int) -> tuple[Path, Path]:
    from multirater_monai.data import write_multirater_datalist

    folder = work / f"images_{n}"
    folder.mkdir(exist_ok=True)
    entries = prepared["entries"]
    test = []
    for i in range(n):
        src = entries[i % len(entries)]
        link = folder / f"img{i:05d}.nii.gz"
        if not link.exists():
            link.symlink_to(src["image"])
        test.append({"image": str(link), "label": src["label"]})
    datalist = work / f"datalist_{n}.json"
    write_multirater_datalist(datalist, {"training": prepared["train"][:8], "validation": prepared["train"][:4],
                                         "test": test}, num_raters=4)
    return folder, datalist


def _child(args) -> None:
    from monai.bundle import run

    configs = REPO / "bundles" / args.bundle / "configs"
    common = {"bundle_root": args.root, "dataset_dir": args.dataset_dir, **SYNTHETIC}
    start = time.perf_counter()
    if args.child == "inference":
        run(config_file=str(configs / "inference.json"), input_dir=args.input, output_dir=args.output,
            save_overlays=False, **{k: v for k, v in common.items() if k != "dataset_name"})
    else:
        run(config_file=[str(configs / "train.json"), str(configs / "evaluate.json")], datalist=args.input,
            output_dir=args.output, **{"validate#dataset#cache_rate": args.cache_rate}, **common)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print("RESULT " + json.dumps({"peak_rss_mib": peak, "seconds": seconds}), flush=True)


def _measure(bundle: str, mode: str, root: Path, data: Path, inputs: Path, output: Path, cache_rate: float = 1.0) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--bundle", bundle, "--root", str(root), "--dataset-dir",
           str(data), "--input", str(inputs), "--output", str(output), "--cache-rate", str(cache_rate)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{mode} with {inputs} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="unet_fusion")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--child", choices=["inference", "evaluation"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--dataset-dir", dest="dataset_dir", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--cache-rate", dest="cache_rate", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    from bench_dpersona import _cpu_model  # here, not at import: the measured child processes load nothing extra

    print(f"command: python benchmarks/bench_memory.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = _prepare(work, args.bundle)
        for n in args.sizes:
            folder, datalist = _inputs_for(work, prepared, n)
            inf = _measure(args.bundle, "inference", work / "root", prepared["data"], folder, work / f"pred_{n}")
            ev = _measure(args.bundle, "evaluation", work / "root", prepared["data"], datalist, work / f"eval_{n}")
            nc = _measure(args.bundle, "evaluation", work / "root", prepared["data"], datalist, work / f"evnc_{n}", 0.0)
            rows.append((n, inf, ev, nc))
            print(f"  {n} images: inference {inf['peak_rss_mib']:.0f} MiB, evaluation {ev['peak_rss_mib']:.0f} MiB "
                  f"(without the cache {nc['peak_rss_mib']:.0f} MiB)", flush=True)
    print(f"\n{args.bundle}: peak resident memory of one process (random weights, 64x64 images, 4 raters)\n")
    print("| images | inference peak RSS (MiB) | inference time (s) | evaluation peak RSS (MiB) | evaluation time (s) "
          "| evaluation without the data cache (MiB) |")
    print("|---|---|---|---|---|---|")
    for n, inf, ev, nc in rows:
        print(f"| {n} | {inf['peak_rss_mib']:.0f} | {inf['seconds']:.1f} | {ev['peak_rss_mib']:.0f} | {ev['seconds']:.1f} "
              f"| {nc['peak_rss_mib']:.0f} |")
    if len(rows) > 1:
        (n0, i0, e0, c0), (n1, i1, e1, c1) = rows[0], rows[-1]
        per = lambda a, b: (b["peak_rss_mib"] - a["peak_rss_mib"]) * 1024 / (n1 - n0)  # noqa: E731
        print(f"\ngrowth per image from {n0} to {n1} images: inference {per(i0, i1):.1f} KiB, evaluation {per(e0, e1):.1f} KiB, "
              f"evaluation without the cache {per(c0, c1):.1f} KiB (evaluate.json caches every test image with MONAI's "
              "CacheDataset, image + rater stack, so that its settings, e.g. 10/30/50 samples, load them once; "
              "--validate#dataset#cache_rate 0 turns it off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
