"""Wrap the user's model for DDP or FSDP2, and the ``no_sync`` context for micro-steps.

DDP (``DistributedDataParallel``) keeps a full replica per rank and all-reduces (averages)
the gradients during backward, bucket by bucket. The Trainer keeps the unwrapped module for
everything but the training forward (instruments, state dicts, the non-finite replay).

FSDP2 (``fully_shard``) shards every parameter along dim 0 across the ranks: each rank
holds a ``DTensor`` whose local shard is ``1/world`` of it, gathers the full weights for
forward/backward and reduce-scatters (averages) the gradients. It is applied in place,
*before* the optimizer is created, so the optimizer (and its state) holds only the shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_NULL = contextlib.nullcontext()


def shard_fsdp(model: nn.Module, device: torch.device) -> None:
    """``fully_shard`` each direct child that owns parameters, then the root (in place).

    One FSDP unit per child keeps only one child's full weights alive at a time; the root
    unit takes the remaining (directly owned) parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for child in model.children():
        if any(p.requires_grad for p in child.parameters()):
            fully_shard(child, mesh=mesh)
    fully_shard(model, mesh=mesh)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (parameters broadcast from rank 0)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)  # keep unsharded-free accumulation local
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def no_sync(
    model: nn.Module, strategy: str, last_micro_step: bool
) -> contextlib.AbstractContextManager[None]:
    """No gradient communication on accumulation micro-steps: DDP reduces only on the last
    micro-batch's backward (``no_sync``); FSDP2 skips the reduce-scatter likewise
    (``set_requires_gradient_sync(False)``). A no-op on the last micro-step."""
    if last_micro_step:
        return _NULL
    if strategy == "ddp":
        return model.no_sync()
    return _fsdp_no_sync(model)


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """FSDP: the full (unsharded) model and optimizer state, gathered to rank 0's CPU memory
    (every rank must call this; other ranks get empty dicts). Keys are parameter names,
    so the model state loads into an unwrapped module too."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
    )


def load_full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict
) -> None:
    """FSDP: load a full state (read by every rank) into this rank's shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)
