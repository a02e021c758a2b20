"""Moving batches to the device and turning a batch into a scalar loss."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from gradoctor.errors import UserCodeError


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a nested dict/list/tuple (namedtuples kept) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return (
            type(batch)({k: to_device(v, device) for k, v in batch.items()})
            if type(batch) is not dict
            else {k: to_device(v, device) for k, v in batch.items()}
        )
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size(batch: Any) -> int:
    """Samples in a batch: dim 0 of its first tensor (host metadata only, no sync); 0 if none."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = (
        batch.values()
        if isinstance(batch, Mapping)
        else batch
        if isinstance(batch, (list, tuple))
        else []
    )
    for value in values:
        n = batch_size(value)
        if n:
            return n
    return 0


def compute_loss(
    model: torch.nn.Module, batch: Any, loss_fn: Callable[..., torch.Tensor] | None
) -> torch.Tensor:
    """The batch contract: with ``loss_fn``, ``loss_fn(model(inputs), targets)``; without it,
    ``model(**batch)`` for a dict, ``model(*batch)`` for a tuple/list, and the model returns
    a scalar loss or an object with ``.loss``.
    """
    if loss_fn is not None:
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise UserCodeError(
                f"with a 'loss:' component each batch must be (inputs, targets), got {_describe(batch)}",
                hint="yield (inputs, targets) from your data, or remove 'loss:' and return the loss from the model",
            )
        inputs, targets = batch
        loss = loss_fn(model(inputs), targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise UserCodeError(
                f"the 'loss:' component returned {_describe(loss)}, not a scalar",
                hint="use a reduction that gives one number (e.g. reduction='mean', the "
                "default of torch.nn losses)",
            )
        return loss
    if isinstance(batch, Mapping):
        out = model(**batch)
    elif isinstance(batch, (list, tuple)):
        out = model(*batch)
    else:
        out = model(batch)
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, Mapping):
        loss = out.get("loss")
    if loss is None:
        loss = out
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise UserCodeError(
            f"without a 'loss:' component the model must return a scalar loss (or .loss), got {_describe(loss)}",
            hint="add a 'loss:' block (e.g. torch.nn.CrossEntropyLoss) or return the loss from forward",
        )
    return loss.reshape(())


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"
