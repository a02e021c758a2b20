"""The one interface every instrument implements, and the view of a step it receives.

A training step (``gradoctor.training.step.run_step``) calls its instruments at named points,
in list order::

    step_start                                    once, before the first micro-batch
    for each micro-batch:
        with forward(step):  loss = model(...)    autocast is entered inside these contexts
        with backward(step): scaled loss.backward()
    with optimizer(step):                         unscale .. zero_grad
        after_unscale(step)                       unscaled, accumulated gradients; before clipping
        before_update(step)                       final (clipped) gradients; before optimizer.step
        after_update(step)                        updated parameters; gradients not yet cleared
    step_end(step, outcome)                       after the scheduler step (or its skip)

and, once per log interval, the loop calls ``flush(interval)`` after its one host copy.
Only instruments whose ``active(step)`` is true take part in a step (decided once per
step, host-side): an inactive instrument costs one Python call per step.

Rules an instrument keeps: no host sync in any step hook (device tensors are kept and handed
to the flush); hooks it registers are removed before its context exits; it never changes a
value the step computes (the losses are the same with it as without it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from gradoctor.torch_private import scaler_scale

_NULL = contextlib.nullcontext()


@dataclass
class StepView:
    """What an instrument sees of the step in progress.

    ``step`` is the 1-based number of the optimizer step being run; ``model`` the unwrapped
    module; ``batch``/``micro`` the current micro-batch (on the device) and its index
    (valid in ``forward``/``backward``); ``loss`` the last micro-batch's unscaled loss
    (0-d, device), set after its forward; ``samples`` the batch elements seen so far.
    ``loss_scale()`` is the scale in force (the scaler's live 0-d device tensor, or None
    without fp16; no sync). ``grad_norms()`` is the per-parameter norm vector of the current
    gradients (``[n_params]`` float32, device, ``ParamIndex.order``), computed at most once
    per step and shared with clipping (one ``_foreach_norm`` per dtype group).
    """

    step: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    accum_steps: int
    norms: Any = None  # a monitors.grad_norms.GradNormRecorder
    batch: Any = None
    micro: int = 0
    loss: torch.Tensor | None = None
    samples: int = 0
    _grad_norms: torch.Tensor | None = field(default=None, repr=False)

    def grad_norms(self) -> torch.Tensor:
        """Per-parameter gradient norms, once per step (see the class docstring)."""
        if self._grad_norms is None:
            if self.norms is None:
                raise RuntimeError("this step has no gradient-norm recorder")
            self._grad_norms = self.norms.record()
        return self._grad_norms

    def loss_scale(self) -> torch.Tensor | None:
        """The live loss scale (0-d device tensor, not a copy), or None without fp16."""
        live = scaler_scale(self.scaler)
        return live.reshape(()) if live is not None else None

    @property
    def has_grad_norms(self) -> bool:
        return self._grad_norms is not None


@dataclass
class StepOutcome:
    """What one optimizer step produced (device tensors stay on the device).

    ``loss``: 0-d, the mean of the micro-batches' unscaled losses. ``grad_norms``:
    ``[n_params]`` (``ParamIndex.order``) of the unscaled gradients before clipping, or None
    when nothing asked for them. ``skipped``: the update was not applied (the fp16 scaler
    found an inf, or the non-finite guard dropped it); the scheduler was then not stepped.
    ``lr``: the first parameter group's learning rate used by the step. ``samples``: batch
    elements over all micro-batches.
    """

    step: int
    loss: torch.Tensor
    grad_norms: torch.Tensor | None
    skipped: bool
    lr: float
    samples: int


class Instrument:
    """Base class: every hook is a no-op, every context a ``nullcontext``. Override what the
    instrument needs in a subclass (the step enters a context point only for instruments
    whose class overrides it); ``name`` labels it in the cost table (``bench/overhead.py``)."""

    name = "instrument"

    def active(self, step: int) -> bool:
        """Whether this instrument takes part in optimizer step ``step`` (host-side, cheap)."""
        return True

    def step_start(self, view: StepView) -> None:
        """Before the first micro-batch."""

    def forward(self, view: StepView) -> contextlib.AbstractContextManager[Any]:
        """Wraps each micro-batch's forward (and the loss); autocast is entered inside."""
        return _NULL

    def backward(self, view: StepView) -> contextlib.AbstractContextManager[Any]:
        """Wraps each micro-batch's scaled backward."""
        return _NULL

    def optimizer(self, view: StepView) -> contextlib.AbstractContextManager[Any]:
        """Wraps the optimizer phase: unscale, clip, step, update, zero_grad."""
        return _NULL

    def after_unscale(self, view: StepView) -> None:
        """Gradients are accumulated and unscaled; clipping has not happened yet."""

    def before_update(self, view: StepView) -> None:
        """Gradients are final (clipped); the optimizer has not stepped."""

    def after_update(self, view: StepView) -> None:
        """The optimizer (and scaler) stepped; gradients are still there."""

    def step_end(self, view: StepView, outcome: StepOutcome) -> None:
        """After the scheduler step (or its skip); gradients are cleared."""

    def flush(self, interval: Any) -> None:
        """Once per log interval, after the loop's host copy (``training.recorder.Interval``):
        move what was kept on the device to the host and record it."""

    def reset(self) -> None:
        """Forget what was kept since the last flush (a replay re-creates those steps)."""


__all__ = ["Instrument", "StepOutcome", "StepView"]
