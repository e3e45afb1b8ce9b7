"""Two-stage training in one ``run training``: Stage II starts from Stage I's best checkpoint.

D-Persona trains the whole network first (Stage I), then only the per-rater projection heads on the
frozen rest (Stage II). The bundle runs two MONAI trainers one after the other; between them this
loads the best Stage I weights (the checkpoint its validation kept, not the last epoch's) and
switches the network to Stage II, so the second trainer's optimizer sees only the heads.
"""

from __future__ import annotations

import torch

from multirater_monai.utils.checkpoint import load_network_weights

__all__ = ["begin_stage2"]


def begin_stage2(network: torch.nn.Module, stage1_checkpoint: str, map_location=None) -> torch.nn.Module:
    """Load ``stage1_checkpoint`` into ``network`` and call its ``start_stage2()``; returns the network."""
    if not callable(getattr(network, "start_stage2", None)):
        raise TypeError(f"{type(network).__name__} has no start_stage2(); two-stage training needs a two-stage network")
    load_network_weights(
        network, stage1_checkpoint, map_location=map_location,
        hint="Stage I kept no checkpoint: its validation must run at least once (val_interval <= stage1_epochs)",
    )
    network.start_stage2()
    trained = sum(p.numel() for p in network.parameters() if p.requires_grad)
    # name the parts that still train (D-Persona: rater_heads; AVAP: preference_head)
    parts = sorted({name.split(".")[0] for name, p in network.named_parameters() if p.requires_grad})
    print(f"[stage II] from {stage1_checkpoint}: {trained} trainable parameters ({', '.join(parts)}), rest frozen",
          flush=True)
    return network
