"""Training on PyTorch's own distributed engine: torchrun, DDP and FSDP2 (``fully_shard``).

One job per module: ``context`` (rank / world / device / process group), ``wrap`` (DDP or
``fully_shard``, ``no_sync`` for accumulation micro-steps), ``aggregate`` (one collective per
log interval), ``sampler`` (a ``DistributedSampler`` for a DataLoader over a map-style data
set) and ``failure`` (a rank that raises stops every rank, and the failing rank's message
reaches the report). The ``--nproc-per-node`` launcher, which re-runs the CLI under
``torch.distributed.run``, is ``gradoctor.launch`` in the api layer.
"""

from gradoctor.distributed.context import DistContext, setup_distributed

__all__ = ["DistContext", "setup_distributed"]
