"""Writing one DICOM-SEG (highdicom) of binary segments that may overlap, referencing its source series.

Every rater's mask is a segment of its own, so several segments can mark the same pixel: that is the
BINARY segmentation type (a LABELMAP could not hold overlapping raters). Each segment carries its
label (the rater's name, or the agreement map's) and the algorithm that made it, so a viewer (3D
Slicer, OHIF) lists "A1", "A2", ... under the algorithm's name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np

__all__ = ["write_dicom_seg"]


def write_dicom_seg(path: str, source_datasets: Sequence, masks: np.ndarray, labels: Sequence[str],
                    algorithm_name: str, algorithm_version: str = "0.1.0", series_description: str | None = None,
                    series_number: int = 300) -> str:
    """Write ``masks`` ``(segments, frames, Rows, Columns)`` bool, frame i on ``source_datasets[i]``, as a SEG.

    Segment ``k + 1`` is labelled ``labels[k]``. Empty frames are kept, so the SEG has one frame per source
    frame and segment (viewers and tests find every frame at its source position). Written atomically.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4 or masks.shape[0] != len(labels) or masks.shape[1] != len(source_datasets):
        raise ValueError(f"masks of shape {masks.shape} for {len(labels)} labels and {len(source_datasets)} frames; "
                         "expected (segments, frames, Rows, Columns)")
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, version=algorithm_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k + 1,
            segment_label=str(label)[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=str(label)[:64],
            tracking_uid=generate_uid(),
        )
        for k, label in enumerate(labels)
    ]
    seg = hd.seg.Segmentation(
        source_images=list(source_datasets),
        pixel_array=np.moveaxis(masks, 0, -1),  # (frames, Rows, Columns, segments)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=int(series_number),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="multirater_monai",
        manufacturer_model_name=algorithm_name[:64],
        software_versions=algorithm_version,
        device_serial_number="0",
        omit_empty_frames=False,
        content_label="MULTIRATER",
        content_description=(series_description or f"{algorithm_name} per-rater segmentation")[:64],
    )
    if series_description:
        seg.SeriesDescription = series_description[:64]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".dcm")
    os.close(fd)
    try:
        seg.save_as(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
