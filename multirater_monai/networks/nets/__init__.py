"""The method networks, one module each; every one implements :class:`~multirater_monai.networks.MultiRaterMethod`."""

from .avap import AVAP, AVAP_OUTPUT_MODES
from .confusion_matrix_net import CM_MODES, CM_OUTPUT_MODES, ConfusionMatrixNet
from .dpersona import OUTPUT_MODES, DPersona
from .fusion_unet import FusionUNet
from .mh_unet import MultiHeadUNet
from .mrnet import MRNET_OUTPUT_MODES, MRNet
from .padl import PADL, PADL_OUTPUT_MODES
from .pionono import PIONONO_OUTPUT_MODES, Pionono
from .prob_unet import ProbabilisticUNet, build_latent_parts
from .proseg import PROSEG_OUTPUT_MODES, ProSeg
from .tab import TAB, TAB_OUTPUT_MODES

__all__ = [
    "AVAP",
    "AVAP_OUTPUT_MODES",
    "ConfusionMatrixNet",
    "CM_MODES",
    "CM_OUTPUT_MODES",
    "DPersona",
    "OUTPUT_MODES",
    "FusionUNet",
    "MultiHeadUNet",
    "MRNet",
    "MRNET_OUTPUT_MODES",
    "Pionono",
    "PIONONO_OUTPUT_MODES",
    "ProbabilisticUNet",
    "build_latent_parts",
    "ProSeg",
    "PROSEG_OUTPUT_MODES",
    "PADL",
    "PADL_OUTPUT_MODES",
    "TAB",
    "TAB_OUTPUT_MODES",
]
