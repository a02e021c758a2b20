"""Who this process is in a distributed run, and its process group.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
the process group is initialised from them (``env://``). A recipe with a ``distributed:``
block run without torchrun trains as world size 1 over an in-process store (no ports), so
the same code path runs on one device. A process group that already exists (the caller set
it up) is used as is and left open at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from gradoctor.devices import pick_device
from gradoctor.errors import RecipeError, RecipeProblem
from gradoctor.recipe.schema import DistributedConfig


@dataclass
class DistContext:
    """One rank of a run. ``device`` is this rank's training device (``cuda:LOCAL_RANK`` on GPUs)."""

    rank: int
    world_size: int
    local_rank: int
    strategy: str  # ddp | fsdp
    backend: str  # nccl | gloo (resolved)
    device: torch.device
    owns_group: bool = False  # we initialised the process group, so we destroy it
    warnings: list[str] = field(default_factory=list)  # shown in the report's distributed block

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the report, the TensorBoard events and the checkpoint."""
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _device(spec: str, local_rank: int) -> torch.device:
    """This rank's device: the recipe's device type, indexed by LOCAL_RANK on CUDA."""
    device = pick_device(spec)  # raises a RecipeError for cuda without CUDA
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise RecipeError(
            [
                RecipeProblem(
                    "train.device",
                    f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s)",
                    hint="launch at most one process per GPU (--nproc-per-node <= GPUs)",
                )
            ]
        )
    # Under torchrun each process takes the GPU of its LOCAL_RANK; alone, the recipe's.
    index = local_rank if "LOCAL_RANK" in os.environ else (device.index or 0)
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise RecipeError(
            [RecipeProblem("distributed.backend", "nccl needs CUDA", hint="use backend: auto")]
        )
    return backend


def setup_distributed(config: DistributedConfig | None, device_spec: str) -> DistContext | None:
    """The run's distributed context, or None for a plain single-process run.

    Under torchrun without a ``distributed:`` block the strategy defaults to ddp."""
    torchrun = launched_by_torchrun()
    if config is None and not torchrun and not dist.is_initialized():
        return None
    config = config or DistributedConfig()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(device_spec, local_rank)
    backend = resolve_backend(config.backend, device)
    owns = False
    if not dist.is_initialized():
        if torchrun:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        else:  # world size 1 without torchrun: an in-process store, no network
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        owns = True
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        strategy=config.strategy,
        backend=dist.get_backend(),
        device=device,
        owns_group=owns,
    )
