"""A post-processing transform that writes the overlay PNG of one inference item."""

from __future__ import annotations

import os

from monai.transforms import Transform

from .overlay import save_overlay_png

__all__ = ["SaveOverlayPNGd"]


class SaveOverlayPNGd(Transform):
    """Write ``<output_dir>/<image name>_overlay.png`` for one decollated item and return it unchanged.

    Args:
        output_dir: folder for the PNGs.
        image_key: the item's image (C, H, W); of a volume (C, H, W, D) run slice by slice, the slice
            where the outputs mark the most pixels is drawn (its index ends the title).
        pred_key: key of the outputs (S, H, W) (probabilities or masks), or a list of keys, each drawn in
            its own panel titled by its key (e.g. ``["personalized", "samples"]``).
        label_key / rater_mask_key: drawn as rater contours when the item has them.
        output_names: legend labels of the outputs (e.g. rater names for personalized outputs); with a
            list of keys, a dict by key.
        enabled: False makes the transform pass the item through (a bundle's ``save_overlays`` switch).
    """

    def __init__(self, output_dir: str, image_key: str = "image", pred_key: str = "pred", label_key: str = "label",
                 rater_mask_key: str = "rater_mask", output_names=None, enabled: bool = True) -> None:
        self.enabled = bool(enabled)
        self.output_dir = output_dir
        self.image_key, self.pred_key = image_key, pred_key
        self.label_key, self.rater_mask_key = label_key, rater_mask_key
        self.output_names = output_names

    def __call__(self, data: dict) -> dict:
        if not self.enabled:
            return data
        image = data[self.image_key]
        source = str(getattr(image, "meta", {}).get("filename_or_obj", "image"))
        name = os.path.basename(source.rstrip(os.sep))
        for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        title = name
        label = data.get(self.label_key)
        outputs = ({k: data[k] for k in self.pred_key if k in data} if isinstance(self.pred_key, (list, tuple))
                   else data[self.pred_key])
        if image.ndim == 4:
            marked = sum((v >= 0.5).sum(dim=(0, 1, 2)) for v in (outputs.values() if isinstance(outputs, dict) else [outputs]))
            z = int(marked.argmax())
            image, label = image[..., z], (label[..., z] if label is not None else None)
            outputs = {k: v[..., z] for k, v in outputs.items()} if isinstance(outputs, dict) else outputs[..., z]
            title = f"{name} slice {z}"
        save_overlay_png(
            os.path.join(self.output_dir, f"{name}_overlay.png"),
            image,  # all channels: a colour image is drawn in colour
            raters=label if label is not None and getattr(label, "ndim", 0) == 3 else None,
            outputs=outputs,
            rater_mask=data.get(self.rater_mask_key),
            output_names=self.output_names,
            title=title,
        )
        return data
