"""The run's record: the interval collector, the history and the TensorBoard sink.

Per step, ``add(outcome)`` keeps the step's device tensors (no sync). Once per log interval,
``flush()`` makes the interval's one device-to-host copy (with the distributed reduction
riding on it), appends to the ``History``, lets each instrument record what it kept, writes
one TensorBoard event per step and reports progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gradoctor.monitors.grad_norms import ParamIndex
from gradoctor.monitors.instrument import Instrument, StepOutcome
from gradoctor.monitors.interval import Interval, IntervalCollector, IntervalData
from gradoctor.sinks.tensorboard import TensorBoardSink
from gradoctor.training.history import History
from gradoctor.training.progress import Reporter


@dataclass
class Flushed:
    """One flushed interval: its ``steps``, host ``data`` and per-step ``skipped`` flags."""

    steps: list[int]
    data: IntervalData
    skipped: list[bool]


class Recorder:
    """Owns ``collector`` (device tensors of the interval), ``history`` and ``tb``."""

    def __init__(
        self,
        index: ParamIndex,
        collector: IntervalCollector,
        history: History,
        tb: TensorBoardSink,
        reporter: Reporter,
        fp16: bool,
    ):
        self.index, self.collector, self.history = index, collector, history
        self.tb, self.reporter, self.fp16 = tb, reporter, fp16
        self.lr: list[float] = []
        self.skipped: list[bool] = []
        self.samples: list[int] = []
        self.interval_start = time.perf_counter()

    @property
    def used(self) -> int:
        return self.collector.used

    def add(self, outcome: StepOutcome) -> None:
        """Keep one step's loss and gradient norms (device) and its host values."""
        self.collector.append(outcome.loss, None, outcome.grad_norms)
        self.lr.append(outcome.lr)
        self.skipped.append(outcome.skipped)
        self.samples.append(outcome.samples)

    def flush(
        self,
        last_step: int,
        instruments: Sequence[Instrument],
        reduce: Callable[..., tuple] | None = None,
        absorb: Callable[[np.ndarray, list[int]], None] | None = None,
    ) -> Flushed | None:
        """The interval's one host sync, then history, instruments, events, progress.
        ``reduce``: the distributed reduction; ``absorb(extra, steps)``: takes its gathered
        per-rank values. None when nothing was added since the last flush."""
        n = self.used
        if n == 0:
            return None
        data = self.collector.flush(reduce)
        now = time.perf_counter()
        step_s = (now - self.interval_start) / n
        self.interval_start = now
        steps = list(range(last_step - n + 1, last_step + 1))
        skipped = list(self.skipped)
        if absorb is not None and data.extra is not None:
            absorb(data.extra, steps)
        self._record(steps, data, step_s)
        interval = Interval(steps, data, self.history, {})
        for inst in instruments:
            inst.flush(interval)
        self._write_events(steps, data, step_s, interval.last_scalars)
        self.tb.flush()
        self.reporter.on_log(
            last_step,
            {
                "loss": float(data.loss[-1]),
                "loss_scale": float(data.scale[-1]) if self.fp16 else None,
                "step_s": step_s,
                "samples_per_s": self.history.samples_per_s[-1],
            },
        )
        self.lr.clear()
        self.skipped.clear()
        self.samples.clear()
        return Flushed(steps, data, skipped)

    def _record(self, steps: list[int], data: IntervalData, step_s: float) -> None:
        h = self.history
        module_norms = self.index.per_module(data.grad_norms)
        h.steps += steps
        h.loss += data.loss.tolist()
        h.lr += self.lr
        h.loss_scale += data.scale.tolist()
        h.grad_norm_total += np.sqrt(
            np.square(data.grad_norms.astype(np.float64)).sum(axis=1)
        ).tolist()
        h.add_module_norms(steps, module_norms, ~np.asarray(self.skipped, dtype=bool))
        for i, (step, skipped) in enumerate(zip(steps, self.skipped)):
            if skipped:
                bad = [
                    self.index.names[j] for j in np.flatnonzero(~np.isfinite(data.grad_norms[i]))
                ]
                h.skipped_steps.append(step)
                h.overflow.append(
                    {
                        "step": step,
                        "scale_after": float(data.scale[i]),
                        "params": bad[:20],
                        "n_params": len(bad),
                    }
                )
        if data.param_norms.any():  # the interval's last step measured its update
            upd = self.index.per_module(data.update_norms[None])[0]
            par = self.index.per_module(data.param_norms[None])[0]
            h.update_ratio_steps.append(steps[-1])
            h.param_norm_total.append(float(np.sqrt(np.square(data.param_norms).sum())))
            for name, u, p in zip(self.index.modules, upd, par):
                h.update_ratio.setdefault(name, []).append(float(u / p) if p > 0 else 0.0)
        h.step_time_s.append(step_s)
        h.samples_per_s.append(sum(self.samples) / (step_s * len(steps)) if step_s > 0 else 0.0)
        h.step_time_steps.append(steps[-1])

    def _write_events(
        self, steps: list[int], data: IntervalData, step_s: float, extra: dict[str, float]
    ) -> None:
        """One TensorBoard event per step (all its scalars together): cheap enough per interval.
        ``extra``: the instruments' scalars for the last step."""
        h, n = self.history, len(steps)
        for i, step in enumerate(steps):
            values = {
                "loss": data.loss[i],
                "lr": h.lr[-n + i],
                "grad_norm/total": h.grad_norm_total[-n + i],
            }
            if self.fp16:
                values["loss_scale"] = data.scale[i]
            if i == n - 1:
                values.update(
                    {f"grad_norm/{m}": v for m, v in zip(self.index.modules, h.module_norms[-1])}
                )
                if h.update_ratio_steps and h.update_ratio_steps[-1] == step:
                    values.update({f"update_ratio/{m}": r[-1] for m, r in h.update_ratio.items()})
                values["time/step_s"] = step_s
                values["throughput/samples_per_s"] = h.samples_per_s[-1]
                values.update(extra)
            self.tb.scalars(values, step)


__all__ = ["Flushed", "Recorder"]
