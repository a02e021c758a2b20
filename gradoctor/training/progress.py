"""The progress interface the training loop talks to (its reporter). The base class is silent;
the rich console reporter lives in the reporting layer (``gradoctor.report.console``)."""

from __future__ import annotations

from typing import Any


class Reporter:
    """Receives progress from a run. Every method is a cheap no-op here; the rich console
    reporter (``gradoctor.report.console``) draws the progress bar and the summary."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Before the first step: ``info`` has steps, start_step, device, precision, output_dir."""

    def on_step(self, step: int) -> None:
        """After each optimizer step (host-side only; no values that would need a sync)."""

    def on_log(self, step: int, metrics: dict[str, Any]) -> None:
        """After each log-interval flush: loss, loss_scale, step_s, samples_per_s (host floats)."""

    def on_end(self, result: Any) -> None:
        """After the run (completed, interrupted or failed), with the TrainResult."""
