"""Names of every output channel of a method network, from its output groups (one source for all tools).

A bundle's ``metadata.json`` (``network_data_format.outputs.pred.channel_def``), the MONAI Label app's
label names and DICOM-SEG segment labels all say which channel is which. They read it here, from
:meth:`MultiRaterMethod.output_groups`, so a change of rater count, sample count or output mode
changes every one of them alike. Each channel gets its own key: MONAI Label's stock bundle tasks
parse ``channel_def`` keys as integers, and a range key ("0-3") stopped the server at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..utils.bundle_helpers import output_names

__all__ = ["output_channel_names", "channel_def"]


def _per_structure(names: list[str], num_structures: int) -> list[str]:
    return names if num_structures == 1 else [f"s{k + 1}_{n}" for k in range(num_structures) for n in names]


def output_channel_names(network, rater_names: Sequence[str]) -> list[tuple[str, str]]:
    """``[(name, description), ...]``, one per channel of ``network``'s output in its current mode, in order.

    Names: the rater names for ``personalized`` (``s<k>_`` prefixed with several structures, structure-major),
    ``sample_<i>`` for ``samples`` (``s<k>_sample_<i>`` with several structures), ``agreement_<j>`` for AVAP's
    agreement classes, ``consensus`` otherwise.
    """
    raters = list(rater_names)
    k = int(network.num_structures)
    if len(raters) != network.num_raters:
        raise ValueError(f"{len(raters)} rater names {raters} for a network of {network.num_raters} raters; "
                         "fix: pass one name per rater (multirater_monai.utils.rater_names(num_raters)).")
    out: list[tuple[str, str]] = []
    expected = 0
    for group, count in network.output_groups().items():
        expected += count
        if group == "personalized":
            names = output_names(raters, k)
            out += [(n, f"{n}: logit of rater {n}'s personalized mask") for n in names]
        elif group == "samples":  # K * S with K structures: structure k's S draws together (structure-major)
            groups = k if count % k == 0 else 1
            per = count // groups
            names = _per_structure([f"sample_{i + 1}" for i in range(per)], groups)
            out += [(n, f"{n}: logit of plausible segmentation {n.rsplit('_', 1)[1]} of {per}") for n in names]
        elif group == "agreement_logits":
            names = _per_structure([f"agreement_{j}" for j in range(network.num_raters + 1)], k)
            out += [(n, f"{n}: logit of the agreement class '{n.rsplit('_', 1)[1]} of {network.num_raters} raters "
                        "mark the pixel'") for n in names]
        else:  # consensus / calibrated: one map per structure
            names = _per_structure([group], k)
            out += [(n, f"{n}: logit of the {group} mask (estimated true label)") for n in names]
        if len(out) != expected:  # a layout this module does not know yet
            raise ValueError(f"{type(network).__name__}: group {group!r} has {count} channels, named {len(out)} so far; "
                             "fix: name the group's layout in multirater_monai.networks.channel_names.")
    return out


def channel_def(network, rater_names: Sequence[str]) -> dict[str, str]:
    """``{"0": description, "1": ...}``: the ``channel_def`` of ``metadata.json``, one key per channel."""
    return {str(i): description for i, (_, description) in enumerate(output_channel_names(network, rater_names))}
