"""Several training stages in one ``run training``: each later stage starts from the previous stage's best checkpoint.

D-Persona trains the whole network first (Stage I), then only the per-rater projection heads on the
frozen rest (Stage II); AVAP trains backbone + AVM, then the APM. The bundle runs one MONAI trainer
per stage; between them this loads the best weights of the previous stage (the checkpoint its
validation kept, not the last epoch's) and switches the network to the next stage
(:meth:`MultiRaterMethod.start_stage`), whose optimizer holds ``parameters_to_train(stage)``.

Under ``torchrun`` the checkpoint is rank 0's file: every rank waits until rank 0 has written it, rank 0
reads it and sends the weights to the others (no other rank reads the file, so on several nodes it need not be
shared). The next stage's trainer then builds its DistributedDataParallel over that stage's parameters only.
"""

from __future__ import annotations

from ..networks.method import MultiRaterMethod
from ..utils.checkpoint import load_network_weights
from ..utils.distributed import is_distributed, is_main_process
from .distributed import barrier, broadcast_network

__all__ = ["begin_stage"]


def begin_stage(network: MultiRaterMethod, stage: int, checkpoint: str, map_location=None) -> MultiRaterMethod:
    """Load ``checkpoint`` (the previous stage's best) into ``network`` and start ``stage``; returns the network."""
    if not isinstance(network, MultiRaterMethod) or network.num_stages < stage:
        stages = network.num_stages if isinstance(network, MultiRaterMethod) else 1
        raise TypeError(f"{type(network).__name__} has {stages} training stage(s); it has no stage {stage}")
    if is_distributed():  # rank 0 wrote the checkpoint in its last validation; the others may be ahead
        barrier()
    if is_main_process():
        load_network_weights(
            network, checkpoint, map_location=map_location,
            hint=f"stage {stage - 1} kept no checkpoint: its validation must run at least once (val_interval <= epochs)",
        )
    broadcast_network(network)
    network.start_stage(stage)
    trained = sum(p.numel() for p in network.parameters_to_train())
    parts = sorted({name.split(".")[0] for name, p in network.named_parameters() if p.requires_grad})
    if not is_main_process():
        return network
    print(f"[stage {stage}] from {checkpoint}: {trained} trainable parameters ({', '.join(parts)}), "
          f"frozen: {', '.join(network.frozen_module_names())}", flush=True)
    return network
