"""Building blocks shared by the method networks (MONAI's ``networks/blocks`` counterpart)."""

from .agreement_branch import AgreementBranch
from .backbone import BACKBONE_ENCODERS, BackboneConfig, UNetFeatureBackbone
from .dynamic_filter_head import DynamicFilterHead
from .gaussian_encoder import AxisAlignedGaussianEncoder
from .latent_head import LatentCombiningHead
from .logit_gaussian import logit_scale, sample_logit_gaussian, tiled_pixel_noise
from .rater_projection import RaterProjectionHeads
from .sampling import KEEP, fixed_noise

__all__ = [
    "AgreementBranch",
    "AxisAlignedGaussianEncoder",
    "BACKBONE_ENCODERS",
    "BackboneConfig",
    "DynamicFilterHead",
    "KEEP",
    "LatentCombiningHead",
    "RaterProjectionHeads",
    "UNetFeatureBackbone",
    "fixed_noise",
    "logit_scale",
    "sample_logit_gaussian",
    "tiled_pixel_noise",
]
