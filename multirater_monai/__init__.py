"""multirater_monai: MONAI components and bundles for multi-rater medical image segmentation."""

__version__ = "0.1.0"
