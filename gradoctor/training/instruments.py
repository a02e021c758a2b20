"""The training loop's default instruments, built from the recipe's ``diagnostics`` block."""

from __future__ import annotations

from gradoctor.monitors.activations import ActivationInstrument
from gradoctor.monitors.grad_norms import GradNormRecorder, GradNormTracker, ParamIndex, UpdateRatio
from gradoctor.monitors.histograms import HistogramInstrument
from gradoctor.monitors.initial_loss import InitialLossProbe
from gradoctor.monitors.instrument import Instrument
from gradoctor.monitors.interval import IntervalCollector
from gradoctor.monitors.loss_scale import LossScaleLedger
from gradoctor.monitors.memory import MemoryInstrument, MemoryMonitor
from gradoctor.recipe.schema import Recipe
from gradoctor.sinks.tensorboard import TensorBoardSink
from gradoctor.training.state import TrainState


def default_instruments(
    recipe: Recipe,
    state: TrainState,
    index: ParamIndex,
    norms: GradNormRecorder,
    memory: MemoryMonitor,
    collector: IntervalCollector,
    tb: TensorBoardSink,
) -> list[Instrument]:
    """In the order they act at each point of a step: gradient norms (every step), memory
    (steps 1-2 and every ``memory_every``), histograms, activations (dead units, fp16
    headroom), the update ratio (log steps), the loss-scale ledger (fp16), the first step's loss
    against chance."""
    d, start = recipe.diagnostics, state.start_step
    out: list[Instrument] = [GradNormTracker(), MemoryInstrument(memory, d.memory_every, start)]
    if d.histogram_every:
        out.append(HistogramInstrument(index, d.histogram_samples, d.histogram_every, tb))
    if d.activation_every:
        out.append(ActivationInstrument(state.model, index, d.activation_every, start))
    out.append(UpdateRatio(norms, collector, d.every, recipe.train.steps))
    out.append(LossScaleLedger(collector, state.scaler.is_enabled()))
    out.append(InitialLossProbe(state.model, state.loss_fn, start))
    return out


__all__ = ["default_instruments"]
