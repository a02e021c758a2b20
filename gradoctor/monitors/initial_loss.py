"""The first step's loss next to the loss function's value at chance, for ``bad_initial_loss``.

On a fresh run's first step, on its first micro-batch, a forward hook on the model keeps its
output; after the loss, the recipe's loss function is evaluated once more on "chance"
predictions of the same shape and the same targets:

- ``CrossEntropyLoss``, ``BCEWithLogitsLoss``: zero logits (uniform over the classes: ln C,
  ln 2; label smoothing, class weights and ``ignore_index`` are honoured, since the recipe's
  own loss object computes it);
- ``NLLLoss``: uniform log-probabilities, −ln C along the class dim (dim 1);
- ``MSELoss``: the targets' mean (the loss is then the targets' variance); ``L1Loss``: their
  median; ``HuberLoss`` / ``SmoothL1Loss``: their mean.

Anything else (another loss, a model that returns its own loss, outputs that are not one
tensor shaped like what the loss takes) is not measured. Cost: step 1 only, one loss
evaluation on a tensor the size of the output; values stay on the device until the flush.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from gradoctor.monitors.instrument import Instrument, StepView
from gradoctor.monitors.interval import Interval

_ZERO_LOGITS = (nn.CrossEntropyLoss, nn.BCEWithLogitsLoss)
_MEAN_TARGET = (nn.MSELoss, nn.HuberLoss, nn.SmoothL1Loss)


def chance_prediction(
    loss_fn: Any, output: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, str] | None:
    """The "chance" prediction for ``loss_fn`` shaped like ``output`` and the rule's name, or
    None for a loss this does not know."""
    if isinstance(loss_fn, _ZERO_LOGITS):
        return torch.zeros_like(output), "uniform logits"
    if isinstance(loss_fn, nn.NLLLoss):
        classes = output.shape[1] if output.dim() > 1 else output.shape[0]
        return torch.full_like(output, -math.log(classes)), "uniform log-probabilities"
    if not target.is_floating_point():
        return None
    if isinstance(loss_fn, _MEAN_TARGET):
        return torch.full_like(output, float(target.float().mean())), "the targets' mean"
    if isinstance(loss_fn, nn.L1Loss):
        return torch.full_like(output, float(target.float().median())), "the targets' median"
    return None


class InitialLossProbe(Instrument):
    """See the module docstring. ``loss_fn``: the recipe's loss (None: the model returns its
    own loss, nothing to compare)."""

    name = "initial_loss"

    def __init__(self, model: nn.Module, loss_fn: Any, start_step: int):
        self.model, self.loss_fn, self.start_step = model, loss_fn, start_step
        self._kept: dict[str, Any] | None = None

    def active(self, step: int) -> bool:
        return self.start_step == 0 and step == 1 and self.loss_fn is not None

    @contextlib.contextmanager
    def forward(self, view: StepView) -> Iterator[None]:
        if view.micro != 0:
            yield
            return
        seen: list[Any] = []
        handle = self.model.register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            yield
        finally:
            handle.remove()
        batch = view.batch
        if not (seen and isinstance(seen[0], torch.Tensor) and isinstance(batch, (tuple, list))):
            return
        output, target = seen[0].detach(), batch[1] if len(batch) == 2 else None
        if not isinstance(target, torch.Tensor):
            return
        with torch.no_grad(), contextlib.suppress(Exception):  # a shape the loss rejects: skip
            guess = chance_prediction(self.loss_fn, output.float(), target)
            if guess is not None:
                chance = self.loss_fn(guess[0], target)
                self._kept = {"loss": None, "chance": chance, "rule": guess[1]}

    @contextlib.contextmanager
    def backward(self, view: StepView) -> Iterator[None]:
        if view.micro == 0 and self._kept is not None and view.loss is not None:
            self._kept["loss"] = view.loss.detach()  # the same micro-batch's loss
        yield

    def flush(self, interval: Interval) -> None:
        if self._kept is None or self._kept["loss"] is None:
            return
        kept, self._kept = self._kept, None
        interval.history.initial_loss = {
            "step": 1,
            "loss": float(kept["loss"]),
            "chance": float(kept["chance"]),
            "rule": kept["rule"],
            "loss_fn": type(self.loss_fn).__name__,
        }

    def reset(self) -> None:
        self._kept = None


__all__ = ["InitialLossProbe", "chance_prediction"]
