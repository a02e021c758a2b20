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
per HVP, on measurement steps only.

Under DDP every rank measures at the same steps (the schedule is deterministic), each on its
own micro-batches, with the HVPs all-reduced over the ranks (``hessian_spectrum(
process_group=...)``: per measurement 12 collectives, 11 of them of P + 5 float64, one per
HVP) and g the step's gradient, which DDP has already averaged over the ranks. The Hessian
measured is that of the mean of all ranks' micro-batch losses (each micro-batch weighs the
same), which is the global batch's loss that DDP's averaged gradient descends when the
ranks' micro-batches are equal-sized (a DistributedSampler pads the data so that they are;
with unequal shards the two weightings differ). BatchNorm normalises each rank's
micro-batch with its own statistics, as DDP's training forward does. Every rank gets the
same values (rank 0's go to the report and TensorBoard). Under FSDP it is off: FSDP2 shards
the parameters into DTensors, and the functional loss (``functional_call`` over the full
parameters) does not run on shards; the first due step records that reason as its
``error`` (``FSDP_REASON``), as an unmeasurable loss does.

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
import torch.distributed as dist

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
FSDP_REASON = (
    "sharpness is not measured under FSDP: FSDP2 shards the parameters into DTensors and the "
    "Hessian-vector products need every rank to hold the full parameters; train with DDP "
    "(distributed.strategy: ddp) or measure a checkpoint with gradoctor curvature"
)


class SharpnessInstrument(Instrument):
    """See the module docstring. ``every``: measurement interval in optimizer steps."""

    name = "sharpness"

    def __init__(
        self,
        state: TrainState,
        every: int,
        tb: TensorBoardSink,
        process_group: dist.ProcessGroup | None = None,
        unsupported: str | None = None,
    ):
        self.state = state
        self.every = every
        self.tb = tb
        self.process_group = process_group  # DDP: HVPs all-reduced over these ranks
        self.unsupported = unsupported  # recorded as the first due step's error
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
        if self.unsupported is not None:
            raise GradoctorError(self.unsupported)
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
                process_group=self.process_group,
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
    ``diagnostics.sharpness_every`` is set, on one process or under DDP (HVPs all-reduced
    over the default process group); under FSDP one that records why it does not measure
    (module docstring)."""
    every = recipe.diagnostics.sharpness_every
    if not every:
        return []
    if state.fsdp:
        return [SharpnessInstrument(state, every, tb, unsupported=FSDP_REASON)]
    group = None
    if distributed and dist.is_initialized() and dist.get_world_size() > 1:
        group = dist.group.WORLD
    return [SharpnessInstrument(state, every, tb, process_group=group)]


__all__ = ["FSDP_REASON", "LANCZOS_HVPS", "SharpnessInstrument", "sharpness_instruments"]
