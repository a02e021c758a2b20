"""The loss-scale ledger: the fp16 scale after every optimizer step, kept on the device.

Each step appends a copy of the scaler's live scale (a 4-byte device copy, no sync) to the
interval collector; the flush brings the interval's scales to the host with everything
else, where skipped steps and overflow records are derived (``training.recorder``).
"""

from __future__ import annotations

from typing import Any

from gradoctor.monitors.instrument import Instrument, StepOutcome, StepView


class LossScaleLedger(Instrument):
    """Active only under fp16 (a disabled scaler has no scale to record)."""

    name = "loss_scale"

    def __init__(self, collector: Any, enabled: bool):
        self.collector, self.enabled = collector, enabled

    def active(self, step: int) -> bool:
        return self.enabled

    def step_end(self, view: StepView, outcome: StepOutcome) -> None:
        scale = view.loss_scale()
        if scale is not None:
            self.collector.scale.append(scale.clone())


__all__ = ["LossScaleLedger"]
