"""Give each rank its own part of the data: a ``DistributedSampler`` for a DataLoader.

A DataLoader over a map-style data set with an ordinary sampler (sequential or random) and
an ordinary batch sampler is rebuilt with the same arguments and
``sampler=DistributedSampler(dataset, world, rank, shuffle=<as before>, seed=train.seed)``:
rank ``r`` gets indices ``r, r + w, r + 2w, ...`` of each epoch's order (padded by repeating
the first indices when the data set does not divide evenly). ``data.batch_size`` is then the
per-rank batch: the global batch is ``world * batch_size``. ``DataStream`` calls
``sampler.set_epoch(epoch)`` at the start of each epoch, so shuffling changes per epoch and
replays exactly on resume.

Anything else (an IterableDataset, a list of batches, a custom sampler, or a loader that
already has a DistributedSampler) is left as it is, with a warning in the report when each
rank would see the same data.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler

from gradoctor.distributed.context import DistContext

# DataLoader attributes that are also its constructor's keyword arguments.
_LOADER_ARGS = (
    "batch_size",
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)

SAME_DATA_WARNING = (
    "the data component is not a DataLoader over a map-style data set with a standard "
    "sampler ({what}): every rank iterates it as is, so unless it shards by rank itself "
    "(torch.distributed.get_rank()), all ranks train on the same batches"
)


def distribute_data(data: Any, ctx: DistContext, seed: int) -> Any:
    """``data`` with a DistributedSampler when it can be given one, else ``data`` (and a
    warning in ``ctx.warnings`` when ranks would see the same batches)."""
    if ctx.world_size == 1:
        return data
    if not isinstance(data, DataLoader):
        ctx.warnings.append(SAME_DATA_WARNING.format(what=type(data).__name__))
        return data
    if isinstance(data.sampler, DistributedSampler):
        return data  # the user sharded it already
    if isinstance(data.dataset, IterableDataset):
        ctx.warnings.append(SAME_DATA_WARNING.format(what="an IterableDataset"))
        return data
    standard_batches = type(data.batch_sampler) is BatchSampler and data.batch_size is not None
    if not standard_batches or type(data.sampler) not in (SequentialSampler, RandomSampler):
        ctx.warnings.append(SAME_DATA_WARNING.format(what="a custom sampler or batch sampler"))
        return data
    sampler = DistributedSampler(
        data.dataset,
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=isinstance(data.sampler, RandomSampler),
        seed=seed,
    )
    kwargs = {k: getattr(data, k) for k in _LOADER_ARGS if hasattr(data, k)}
    if not kwargs.get("num_workers"):  # these are only accepted with worker processes
        kwargs.pop("prefetch_factor", None)
        kwargs["persistent_workers"] = False
    return DataLoader(data.dataset, sampler=sampler, **kwargs)
