"""Serving the bundles to viewers: one image in, named outputs out; datastore labels in, a bundle training out.

What a MONAI Label app (``monailabel_app/``) needs, kept here so it is tested in the project's own
environment; the app itself only adapts these to MONAI Label's task classes.
"""

from .bundle_inference import AGREEMENT_KEYS, BundleInference, select_output
from .datastore import datalist_from_rater_tags, training_command

__all__ = ["BundleInference", "select_output", "AGREEMENT_KEYS", "datalist_from_rater_tags", "training_command"]
