"""The sharpness instrument of ``gradoctor train`` (``diagnostics.sharpness_every``).

Every ``every`` steps, on the step's own batch (all of its micro-batches: the Hessian of the
step's loss), just before the optimizer step:

- the top Hessian eigenvalue λmax by ``LANCZOS_HVPS`` fully reorthogonalised Lanczos HVPs,
  warm-started from the previous measurement's eigenvector (``hessian_spectrum(max_hvps=...,
  v0=...)``; a Ritz value, so a lower bound that the warm start makes tight as the top
  direction drifts slowly);
- the batch sharpness gᵀHg/‖g‖² with g the step's own (unscaled, clipped) gradient: one HVP;
- the optimizer's threshold at the learning rate in force (``stability_threshold``). For
  Adam/AdamW both quantities are of the preconditioned D^-1/2 H D^-1/2 (P from the optimizer
  state, which exists from the second step on).

It never changes the trajectory: the loss is evaluated in fp32 through ``functional_call``
with cloned buffers (BatchNorm statistics untouched), dropout is off during the measurement,
``.grad`` and every module's mode are restored, and torch's RNG is forked around it (tested:
the losses of a run with the instrument are bitwise those of a run without). Host syncs: one
per HVP, on measurement steps only. Under distributed training it is off (each rank would
measure its own shard of the batch; the all-reduced HVP is not built yet) and says so.

Records go to ``history.sharpness`` and TensorBoard (``curvature/sharpness``,
``curvature/batch_sharpness``, ``curvature/threshold``) at the interval flush; the
``edge_of_stability`` rule reads them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from gradoctor.errors import GradoctorError
from gradoctor.hessian.api import hessian_spectrum
from gradoctor.hessian.functional import ParamLayout
from gradoctor.hessian.stability import adam_preconditioner, stability_threshold
from gradoctor.monitors.instrument import Instrument, StepOutcome, StepView
from gradoctor.recipe.schema import Recipe
from gradoctor.sinks.tensorboard import TensorBoardSink
from gradoctor.training.batches import compute_loss
from gradoctor.training.state import TrainState

LANCZOS_HVPS = 10  # per measurement: 9 Lanczos steps and the residual HVP (plus 1 for g)


class SharpnessInstrument(Instrument):
    """See the module docstring. ``every``: measurement interval in optimizer steps."""

    name = "sharpness"

    def __init__(self, state: TrainState, every: int, tb: TensorBoardSink):
        self.state = state
        self.every = every
        self.tb = tb
        self._batches: list[Any] = []
        self._v0: torch.Tensor | None = None
        self._preconditioned_v0: torch.Tensor | None = None
        self._pending: list[dict[str, Any]] = []
        self.disabled: str | None = None  # why measurements stopped (a note in the record)

    def active(self, step: int) -> bool:
        return self.disabled is None and step % self.every == 0

    @contextlib.contextmanager
    def forward(self, view: StepView) -> Iterator[None]:
        self._batches.append(view.batch)  # a reference until the step ends
        yield

    def before_update(self, view: StepView) -> None:
        batches, self._batches = self._batches, []
        try:
            record = self._measure(view, batches)
        except GradoctorError as exc:  # a loss that cannot be measured: say so, train on
            self.disabled = exc.message
            record = {"step": view.step, "error": exc.message}
        if record is not None:
            self._pending.append(record)

    def step_end(self, view: StepView, outcome: StepOutcome) -> None:
        self._batches = []

    def flush(self, interval: Any) -> None:
        for record in self._pending:
            interval.history.sharpness.append(record)
            for tag in ("sharpness", "batch_sharpness", "threshold"):
                value = record.get(tag)
                if value is not None and math.isfinite(value):
                    self.tb.scalar(f"curvature/{tag}", value, record["step"])
        self._pending = []

    def reset(self) -> None:
        self._pending, self._batches = [], []

    # ---- one measurement ------------------------------------------------------------------
    def _measure(self, view: StepView, batches: list[Any]) -> dict[str, Any] | None:
        s = self.state
        stability = stability_threshold(s.optimizer)
        precondition = None
        if stability.preconditioned:
            try:
                precondition = adam_preconditioner(s.optimizer, s.model)
            except GradoctorError:
                return None  # no optimizer state before the first update
        layout = ParamLayout.of(s.model, None)
        grads = {n: p.grad for n, p in s.model.named_parameters() if p.requires_grad}
        gradient = layout.flatten(grads)
        if not bool(torch.isfinite(gradient).all()):  # an fp16 overflow step: nothing to say
            return None
        v0 = self._preconditioned_v0 if precondition is not None else self._v0
        devices = [s.device] if s.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            result = hessian_spectrum(
                s.model,
                lambda model, batch: compute_loss(model, batch, s.loss_fn),
                batches,
                top_k=1,
                max_hvps=LANCZOS_HVPS,
                v0=v0,
                seed=view.step,
                preconditioner=precondition,
                rayleigh={"gradient": gradient},
            )
        vector = result.eigenvectors[:, 0] if result.eigenvectors is not None else None
        if precondition is not None:
            self._preconditioned_v0 = vector
        else:
            self._v0 = vector
        assert result.rayleigh is not None
        return {
            "step": view.step,
            "sharpness": result.eigenvalues[0],
            "batch_sharpness": result.rayleigh["gradient"],
            "threshold": stability.threshold,
            "lr": stability.lr,
            "preconditioned": stability.preconditioned,
            "residual": result.residuals[0],
            "hvps": result.hvps,
        }


def sharpness_instruments(
    recipe: Recipe, state: TrainState, tb: TensorBoardSink, distributed: bool
) -> list[Instrument]:
    """The instruments ``gradoctor.api`` adds to a run: the sharpness instrument when
    ``diagnostics.sharpness_every`` is set and the run is a single process."""
    every = recipe.diagnostics.sharpness_every
    if not every or distributed:
        return []
    return [SharpnessInstrument(state, every, tb)]


__all__ = ["LANCZOS_HVPS", "SharpnessInstrument", "sharpness_instruments"]
