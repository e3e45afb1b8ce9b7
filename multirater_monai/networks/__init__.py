"""Networks: the method interface, shared building blocks (``blocks``), and one module per method (``nets``).

A new method is one module in ``nets`` implementing :class:`MultiRaterMethod`, built from the blocks.
"""

from .blocks import (
    BACKBONE_ENCODERS,
    KEEP,
    AgreementBranch,
    AxisAlignedGaussianEncoder,
    BackboneConfig,
    DynamicFilterHead,
    LatentCombiningHead,
    RaterProjectionHeads,
    UNetFeatureBackbone,
    fixed_noise,
)
from .channel_names import channel_def, output_channel_names
from .method import OUTPUT_GROUP_NAMES, MultiRaterMethod
from .nets import (
    AVAP,
    AVAP_OUTPUT_MODES,
    CM_MODES,
    CM_OUTPUT_MODES,
    OUTPUT_MODES,
    PIONONO_OUTPUT_MODES,
    PROSEG_OUTPUT_MODES,
    ConfusionMatrixNet,
    DPersona,
    FusionUNet,
    MultiHeadUNet,
    MRNet,
    MRNET_OUTPUT_MODES,
    Pionono,
    ProbabilisticUNet,
    ProSeg,
    build_latent_parts,
)
from .nets import PADL, PADL_OUTPUT_MODES, TAB, TAB_OUTPUT_MODES
from .rater_batch import check_multirater_batch, random_present_rater

__all__ = [
    "MultiRaterMethod",
    "channel_def",
    "output_channel_names",
    "OUTPUT_GROUP_NAMES",
    "BACKBONE_ENCODERS",
    "BackboneConfig",
    "UNetFeatureBackbone",
    "AxisAlignedGaussianEncoder",
    "LatentCombiningHead",
    "RaterProjectionHeads",
    "DynamicFilterHead",
    "AgreementBranch",
    "KEEP",
    "fixed_noise",
    "ProbabilisticUNet",
    "DPersona",
    "ProSeg",
    "AVAP",
    "MultiHeadUNet",
    "MRNet",
    "MRNET_OUTPUT_MODES",
    "ConfusionMatrixNet",
    "Pionono",
    "PIONONO_OUTPUT_MODES",
    "CM_MODES",
    "CM_OUTPUT_MODES",
    "FusionUNet",
    "OUTPUT_MODES",
    "PROSEG_OUTPUT_MODES",
    "AVAP_OUTPUT_MODES",
    "build_latent_parts",
    "check_multirater_batch",
    "random_present_rater",
    "PADL",
    "PADL_OUTPUT_MODES",
    "TAB",
    "TAB_OUTPUT_MODES",
]
