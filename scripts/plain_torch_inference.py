"""Run a bundle's TorchScript model on a NIfTI image with torch, numpy and nibabel only.

For clinical pipelines that cannot install MONAI or multirater_monai: the bundle folder carries all
this needs (``models/model.ts``, ``configs/metadata.json`` for the output channels and the size
divisor (``spatial_divisor``), ``configs/inference.json`` for the intensity window). It does what the bundle's
``inference.json`` does before and after the network: window the intensities to [0, 1], pad each
2D slice symmetrically to a multiple of the divisor, threshold the sigmoid of every output channel,
crop the padding away. A 3D volume goes through the 2D model slice by slice along its last axis.

    python scripts/plain_torch_inference.py --bundle bundles/dpersona --image ct.nii.gz --out DIR

Writes ``DIR/<image stem>_masks.nii.gz``, shape (H, W[, D], C) uint8 with the input's affine and
header, and ``DIR/<image stem>_masks.json`` naming the C channels (from ``channel_def``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import nibabel as nib
import numpy as np
import torch


def channel_names(metadata: dict) -> list[str]:
    """One name per output channel from ``network_data_format.outputs.pred.channel_def`` (``"0-3"`` keys expand)."""
    pred = metadata["network_data_format"]["outputs"]["pred"]
    names = [f"channel {c}" for c in range(int(pred["num_channels"]))]
    for key, name in pred.get("channel_def", {}).items():
        first, _, last = str(key).partition("-")
        span = range(int(first), int(last or first) + 1)
        for offset, c in enumerate(span):
            names[c] = name if len(span) == 1 else f"{name} [{offset}]"
    return names


def size_divisor(metadata: dict) -> int:
    """The multiple each slice is padded to, as the bundle's preprocessing does: ``spatial_divisor`` of the
    metadata, else ``k`` of a ``"k*n"`` input spatial shape, else 1."""
    if "spatial_divisor" in metadata:
        return int(metadata["spatial_divisor"])
    shape = metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    match = re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*", str(shape[0]))
    return int(match.group(1)) if match else 1


def predict_slice(model, image: np.ndarray, window: tuple[float, float], divisor: int, threshold: float) -> np.ndarray:
    """(H, W) intensities -> (H, W, C) uint8 masks."""
    low, high = window
    x = np.clip((image.astype(np.float32) - low) / (high - low), 0.0, 1.0)
    pads = [((-s) % divisor // 2, (-s) % divisor - (-s) % divisor // 2) for s in x.shape]
    x = np.pad(x, pads)  # zeros, as MONAI's DivisiblePad
    with torch.no_grad():
        logits = model(torch.from_numpy(x)[None, None])[0]  # (C, H', W')
    (top, _), (left, _) = pads
    logits = logits[:, top:top + image.shape[0], left:left + image.shape[1]]
    return (torch.sigmoid(logits) > threshold).to(torch.uint8).permute(1, 2, 0).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="bundle folder (models/model.ts, configs/metadata.json, configs/inference.json)")
    parser.add_argument("--image", required=True, help="NIfTI image, 2D (H, W[, 1]) or 3D (H, W, D)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args(argv)

    model_path = os.path.join(args.bundle, "models", "model.ts")
    if not os.path.isfile(model_path):
        sys.exit(f"ERROR: {model_path} not found; fix: pass --bundle a bundle folder with shipped weights, or export "
                 "one with `python -m monai.bundle ckpt_export`.")
    with open(os.path.join(args.bundle, "configs", "metadata.json")) as f:
        metadata = json.load(f)
    with open(os.path.join(args.bundle, "configs", "inference.json")) as f:
        window = tuple(float(v) for v in json.load(f)["intensity_range"])
    model = torch.jit.load(model_path, map_location="cpu").eval()

    image = nib.load(args.image)
    data = np.asarray(image.dataobj, dtype=np.float32)
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        sys.exit(f"ERROR: {args.image} has shape {image.shape}; fix: pass a 2D image or a 3D volume (one channel).")
    divisor = size_divisor(metadata)
    if data.ndim == 2:
        masks = predict_slice(model, data, window, divisor, args.threshold)
    else:  # a 2D model on a volume: slice by slice along the last axis -> (H, W, D, C)
        masks = np.stack([predict_slice(model, data[..., z], window, divisor, args.threshold)
                          for z in range(data.shape[2])], axis=2)

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.basename(args.image).split(".nii")[0]
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    out = os.path.join(args.out, f"{stem}_masks.nii.gz")
    nib.save(nib.Nifti1Image(masks, image.affine, header), out)
    with open(os.path.join(args.out, f"{stem}_masks.json"), "w") as f:
        json.dump({"channels": channel_names(metadata), "source": os.path.abspath(args.image)}, f, indent=1)
    print(f"wrote {out}: {masks.shape[-1]} channels, shape {masks.shape[:-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
