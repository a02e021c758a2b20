"""What happens when a non-finite value shows up: find the bad step, replay it, decide.

Detection costs nothing extra: it reads the interval's host copy at each flush. Triggers:
a non-finite loss (any precision); a non-finite gradient (fp32/bf16); under fp16, overflow
that is not the scaler's normal calibration — the scale at or below
``thresholds.collapse_scale``, or ``thresholds.collapse_skips`` consecutive skips after
calibration. The replay happens once per run, from the latest snapshot (taken every
``diagnostics.snapshot_every`` steps at a flush boundary): restore the run state, re-run the
steps up to the bad one without instruments (the caller's ``rerun``; bitwise the same on
CPU), replay the bad step watched (``monitors.first_nonfinite``). The guard then returns a
``Decision`` for ``diagnostics.on_nonfinite`` and the caller applies it: ``stop`` (default)
ends the run with the state just before the bad step (what the checkpoint then holds);
``skip`` drops the bad step's update and goes on, from then on checking every step (one host
sync per step) and dropping each update whose loss or gradients are non-finite; ``continue``
goes on unchanged (the steps after the bad one are re-run, same numerics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from gradoctor.distributed.aggregate import pick_finding
from gradoctor.monitors.first_nonfinite import ReplayFinding, replay_step
from gradoctor.monitors.interval import IntervalData
from gradoctor.recipe.schema import DiagnosticsConfig
from gradoctor.training.batches import to_device
from gradoctor.training.environment import capture_rng, restore_rng
from gradoctor.training.snapshot import Snapshot
from gradoctor.training.state import TrainState
from gradoctor.training.step import StepConfig, backward_loss, micro_batch_loss


class StopRun(Exception):
    """Raised inside the loop to end a run after a non-finite replay (``on_nonfinite: stop``)."""


@dataclass
class Decision:
    """What the caller does after a non-finite step. ``action``: ``stop`` (end the run; the
    state is the one just before ``bad_step``), ``skip`` (the state is just after
    ``bad_step``, whose update was dropped: drop its history and drop non-finite updates
    from now on), ``continue`` (the state is just before ``bad_step``: drop its history and
    go on), or ``report`` (nothing could be replayed; the finding is recorded, go on)."""

    action: Literal["stop", "skip", "continue", "report"]
    bad_step: int
    record: dict[str, Any]


class NonFiniteGuard:
    """Snapshots at flush boundaries, detection on the interval's host copy, one replay.

    ``findings`` holds one record per replay (step, reason, mode, where); ``can_replay`` is
    False under FSDP (sharded state is not snapshotted: non-finite steps are reported only).
    """

    def __init__(
        self,
        diagnostics: DiagnosticsConfig,
        device: torch.device,
        *,
        fp16: bool,
        can_replay: bool = True,
    ):
        self.cfg = diagnostics
        self.fp16 = fp16
        self.snapshot_every = math.ceil(diagnostics.snapshot_every / diagnostics.every) * (
            diagnostics.every
        )
        self.snapshot = Snapshot(device)
        self.can_replay = can_replay
        self.replayed = False
        self.findings: list[dict[str, Any]] = []
        self.calibrated = False  # fp16: a step has gone through since the start
        self.consecutive_skips = 0

    def maybe_snapshot(self, state: TrainState) -> None:
        """At a flush boundary: keep the state if this is a snapshot step (cheap, async on CUDA)."""
        if (
            not self.replayed
            and self.can_replay
            and (state.step == state.start_step or state.step % self.snapshot_every == 0)
        ):
            self.snapshot.take(state)

    def first_bad_step(
        self, steps: list[int], data: IntervalData, skipped: list[bool]
    ) -> tuple[int, str] | None:
        """``(step, reason)`` of the interval's first bad step, or None (host values only)."""
        th = self.cfg.thresholds
        fp16 = self.fp16
        if not fp16 and np.isfinite(data.loss).all() and np.isfinite(data.grad_norms).all():
            return None  # the usual case, vectorized
        found = None
        for i, step in enumerate(steps):
            if not math.isfinite(data.loss[i]):
                found = found or (step, "loss")
            elif not fp16 and not np.isfinite(data.grad_norms[i]).all():
                found = found or (step, "gradient")
            if fp16:
                if skipped[i]:
                    self.consecutive_skips += 1
                else:
                    self.consecutive_skips, self.calibrated = 0, True
                collapsed = data.scale[i] <= th.collapse_scale
                persistent = self.calibrated and self.consecutive_skips >= th.collapse_skips
                if skipped[i] and (collapsed or persistent):
                    found = found or (step, "overflow")
        return found

    def handle(
        self,
        bad_step: int,
        reason: str,
        state: TrainState,
        config: StepConfig,
        rerun: Callable[[], None],
        ledger: Any = None,
    ) -> Decision | None:
        """Replay ``bad_step`` (once per run) and decide; None after the first replay.

        ``rerun()`` runs one optimizer step of ``state`` without instruments or recording.
        ``ledger`` (distributed): notes which ranks went non-finite first."""
        if self.replayed:
            return None
        self.replayed = True
        mode = self.cfg.on_nonfinite
        record: dict[str, Any] = {"step": bad_step, "reason": reason, "mode": mode}
        if ledger is not None:  # distributed: the ranks whose own values were non-finite first
            record["ranks"] = ledger.note_nonfinite(bad_step, reason)
        if self.snapshot.state is None or self.snapshot.step >= bad_step:
            record["replay"] = {"phase": "unavailable"}
            self.findings.append(record)
            return Decision("stop" if mode == "stop" else "report", bad_step, record)
        finding, pre_data, pre_rng = self._replay(bad_step, state, config, rerun)
        record["replay"] = finding.to_dict()
        if ledger is not None:  # each rank replayed its own batch; keep the telling one
            record["replay"], record["replay_rank"] = pick_finding(
                record["replay"], record["ranks"]
            )
        self.findings.append(record)
        if mode == "skip":
            state.step = bad_step  # its batches are consumed; its update is dropped
            return Decision("skip", bad_step, record)
        state.data.restore(pre_data)
        restore_rng(pre_rng)
        return Decision("continue" if mode == "continue" else "stop", bad_step, record)

    def _replay(
        self, bad_step: int, state: TrainState, config: StepConfig, rerun: Callable[[], None]
    ) -> tuple[ReplayFinding, dict[str, Any], dict[str, Any]]:
        self.snapshot.restore(state)
        while state.step < bad_step - 1:
            rerun()
        pre_data, pre_rng = state.data.state(), capture_rng()
        batches = [to_device(state.data.next(), state.device) for _ in range(config.accum_steps)]
        restore_rng(pre_rng)  # the same dropout masks as the real step

        def forward(batch: Any) -> torch.Tensor:
            loss = micro_batch_loss(state, batch, config.precision, model=state.model)
            return backward_loss(state, loss, config.accum_steps)

        # Rank-local under DDP: state.model is the unwrapped module, so the replay's forward
        # and backward make no collectives (DDP's gradient hooks stay idle without its forward).
        finding = replay_step(state.model, batches, forward, lambda loss: loss.backward())
        state.optimizer.zero_grad(set_to_none=True)
        return finding, pre_data, pre_rng


__all__ = ["Decision", "NonFiniteGuard", "StopRun"]
