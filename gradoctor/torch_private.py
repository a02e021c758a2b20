"""Every read or write of a private PyTorch attribute, in one place.

Each has a reason (no public, sync-free alternative) and a fallback where one exists; when a
torch upgrade renames one of these, this is the only module to change.

- ``GradScaler._scale`` / ``._growth_tracker``: the live device tensors behind the loss
  scale. ``get_scale()`` and ``state_dict()`` copy the scale to the host (a sync); the loop
  reads the scale every step and the replay snapshot copies it, so both use the tensors.
- ``GradScaler._per_optimizer_states[id(opt)]["found_inf_per_device"]``: whether the last
  ``step()`` found an inf, for fused optimizers, which always "step" (they consume the flag).
- ``Optimizer._step_supports_amp_scaling``: set by optimizers (fused AdamW/SGD) that take
  the scaler's ``found_inf`` themselves.
- ``DTensor._local_tensor``: an FSDP2 parameter's local shard as a plain tensor, without the
  communication ``to_local()`` may imply for some placements.
- ``Module._parameters`` / ``._buffers``: the slot tables, written directly by check-grads'
  module copy (``torch.func.functional_call`` per evaluation costs more than the forward of
  a small layer), and by the curvature measurement to put back a buffer the user's loss
  replaced (``model.running_mean = ...`` rebinds the slot; ``copy_`` cannot undo that).
- ``torch._C._set_grad_enabled``: ``no_grad`` without its context object, in check-grads'
  finite-difference sweep (thousands of tiny forwards).
- ``torch.utils._python_dispatch.TorchDispatchMode`` and ``torch.utils._pytree``: the op-level
  interception behind the non-finite replay and the memory tracker (no public equivalent).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

set_grad_enabled_raw = torch._C._set_grad_enabled


def slot_tables(module: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(module._parameters, module._buffers)``: the live slot dicts (not copies)."""
    return module._parameters, module._buffers


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP ``DTensor`` (a view, no communication); else ``t``."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def scaler_scale(scaler: torch.amp.GradScaler) -> torch.Tensor | None:
    """The scaler's live scale tensor (``[1]`` float32 on the device), or None before the first
    ``scale()`` call and for a disabled scaler. No host sync."""
    if not scaler.is_enabled():
        return None
    return getattr(scaler, "_scale", None)


def scaler_live_state(scaler: torch.amp.GradScaler) -> dict[str, torch.Tensor] | None:
    """``{"scale", "growth"}``: the live device tensors (not copies), or None when lazy."""
    scale = scaler_scale(scaler)
    if scale is None:
        return None
    return {"scale": scale, "growth": scaler._growth_tracker}


def load_scaler_live_state(
    scaler: torch.amp.GradScaler, live: dict[str, torch.Tensor] | None
) -> None:
    """Put the live tensors back (copied in place). ``None`` (a state taken before the first
    step) makes the scaler initialise them lazily again, as a fresh one would."""
    if not scaler.is_enabled():
        return
    if live is None:
        scaler._scale, scaler._growth_tracker = None, None
    elif getattr(scaler, "_scale", None) is not None:
        scaler._scale.copy_(live["scale"])
        scaler._growth_tracker.copy_(live["growth"])


def takes_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer consumes the scaler's found_inf itself (fused optimizers)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def found_inf_total(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> Any:
    """Sum of the last step's found_inf flags over devices (host float; one sync per device)."""
    state = scaler._per_optimizer_states[id(optimizer)]
    return sum(v.item() for v in state["found_inf_per_device"].values())


__all__ = [
    "TorchDispatchMode",
    "pytree",
    "set_grad_enabled_raw",
    "slot_tables",
    "tree_flatten",
    "found_inf_total",
    "load_scaler_live_state",
    "local_tensor",
    "scaler_live_state",
    "scaler_scale",
    "takes_found_inf",
]
