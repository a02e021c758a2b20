"""Put a model into the state a curvature measurement needs, and restore it exactly after.

During ``measurement_state(model)``:

- the model keeps its mode (train mode: BatchNorm normalises with batch statistics), except
  that dropout modules in train mode are switched to eval, so the loss is a deterministic
  function of the parameters (a Hessian of a random loss is not symmetric); BatchNorm modules
  found in eval mode are left so, and reported (they measure another loss);
- every buffer is snapshotted and copied back bitwise on exit (into the same tensor, put back
  in its module slot); ``requires_grad`` flags and ``.grad`` of every parameter are put back
  too. The HVPs themselves never touch the live buffers (``functional.py`` runs the model on
  clones), so the snapshot is a safety net for a loss function that writes to the model.

Cost: one copy of every buffer (small next to the parameters in usual models). No hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from gradoctor.torch_private import slot_tables

DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass
class MeasurementState:
    """What ``measurement_state`` changed or found (qualified module names)."""

    disabled_dropout: list[str] = field(default_factory=list)
    eval_batchnorm: list[str] = field(default_factory=list)  # left as they are, but said

    def notes(self) -> list[str]:
        notes = []
        if self.disabled_dropout:
            notes.append(
                f"dropout disabled for the measurement ({_names(self.disabled_dropout)}); "
                "the Hessian is that of the loss without dropout"
            )
        if self.eval_batchnorm:
            notes.append(
                f"BatchNorm in eval mode ({_names(self.eval_batchnorm)}): the Hessian uses "
                "running statistics, i.e. it is that of the eval-mode loss, not the training loss"
            )
        return notes


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return f"{len(names)} module(s): {shown}" + (
        f" and {len(names) - 5} more" if len(names) > 5 else ""
    )


@contextmanager
def measurement_state(model: nn.Module) -> Iterator[MeasurementState]:
    """Disable dropout modules, snapshot buffers/flags/grads; restore all of it on exit."""
    state = MeasurementState()
    modes = {m: m.training for m in model.modules()}
    buffers = []  # (the module's buffer slot table, name, live tensor, copy)
    for module in model.modules():
        slots = slot_tables(module)[1]
        buffers += [(slots, n, b, b.detach().clone()) for n, b in slots.items() if b is not None]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for name, module in model.named_modules():
            label = name or type(module).__name__
            if isinstance(module, DROPOUT_TYPES) and module.training and module.p > 0:
                module.train(False)
                state.disabled_dropout.append(label)
            elif isinstance(module, BATCHNORM_TYPES) and not module.training:
                state.eval_batchnorm.append(label)
        yield state
    finally:
        for module, training in modes.items():
            module.training = training
        with torch.no_grad():
            for slots, name, original, saved in buffers:
                slots[name] = original  # in case the loss function replaced the tensor
                original.copy_(saved)  # same dtype: a bitwise copy
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
