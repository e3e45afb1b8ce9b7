"""The bundles' pre- and post-processing components (one ``_target_`` each, shared by every bundle)."""

from .method_outputs import MethodOutputsd
from .preprocessing import MultiRaterPreprocessing
from .save_dicom_seg import SaveDicomSegd
from .save_outputs import SaveOutputsd

__all__ = ["MultiRaterPreprocessing", "MethodOutputsd", "SaveOutputsd", "SaveDicomSegd"]
