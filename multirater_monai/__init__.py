"""multirater_monai: MONAI components and bundles for multi-rater medical image segmentation.

Importing the package imports its subpackages, so a bundle config needs only ``$import multirater_monai``.
"""

__version__ = "0.1.0"

import logging  # noqa: E402
import warnings  # noqa: E402

# MONAI's image loader registers an optional GPU DICOM decoder (nvImageCodec) that this project never
# uses; without it installed, every LoadImage prints two warnings a user can do nothing about.
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

from . import utils  # noqa: E402  (first: the others use its errors and atomic writes)
from . import data, engines, losses, metrics, networks, transforms, visualize  # noqa: E402

# an uncaught error ends with the project's own message (file and fix) as the last line of output
utils.errors.install_error_summary()

__all__ = ["data", "engines", "losses", "metrics", "networks", "transforms", "utils", "visualize"]
