"""Networks: U-Net feature backbone, Gaussian latent encoders, latent-combining head, methods."""

from .backbone import BACKBONE_ENCODERS, UNetFeatureBackbone
from .dpersona import OUTPUT_MODES, DPersona
from .gaussian_encoder import AxisAlignedGaussianEncoder
from .latent_head import LatentCombiningHead
from .proseg import PROSEG_OUTPUT_MODES, ProSeg
from .prob_unet import ProbabilisticUNet, build_latent_parts, check_multirater_batch, random_present_rater
from .rater_projection import RaterProjectionHeads

__all__ = [
    "BACKBONE_ENCODERS",
    "UNetFeatureBackbone",
    "AxisAlignedGaussianEncoder",
    "LatentCombiningHead",
    "RaterProjectionHeads",
    "ProbabilisticUNet",
    "DPersona",
    "ProSeg",
    "PROSEG_OUTPUT_MODES",
    "OUTPUT_MODES",
    "build_latent_parts",
    "check_multirater_batch",
    "random_present_rater",
]
from .dynamic_filter_head import DynamicFilterHead  # noqa: E402

__all__ += ["DynamicFilterHead"]
from .agreement_branch import AgreementBranch  # noqa: E402
from .avap import AVAP, AVAP_OUTPUT_MODES  # noqa: E402

__all__ += ["AgreementBranch", "AVAP", "AVAP_OUTPUT_MODES"]
