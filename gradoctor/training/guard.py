"""What the loop does when a non-finite value shows up: find the bad step, replay it, act.

Detection costs nothing extra: it reads the interval's host copy at each flush. Triggers:
a non-finite loss (any precision); a non-finite gradient (fp32/bf16); under fp16, overflow
that is not the scaler's normal calibration — the scale at or below
``thresholds.collapse_scale``, or ``thresholds.collapse_skips`` consecutive skips after
calibration. The replay happens once per run, from the latest snapshot (taken every
``diagnostics.snapshot_every`` steps at a flush boundary): restore, re-run the steps up to
the bad one without instruments (bitwise the same on CPU), replay the bad step watched.
Then ``diagnostics.on_nonfinite``: ``stop`` (default) ends the run with a checkpoint of the
state just before the bad step; ``skip`` drops the bad step's update and goes on, from then on checking every step (one host
sync per step) and dropping each update whose loss or gradients are non-finite;
``continue`` goes on unchanged (the steps after the bad one are re-run, same numerics).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from gradoctor.diagnose.replay import replay_step
from gradoctor.training.batches import compute_loss, to_device
from gradoctor.training.environment import capture_rng, restore_rng
from gradoctor.training.precision import autocast
from gradoctor.training.snapshot import Snapshot

if TYPE_CHECKING:
    from gradoctor.monitors.interval import IntervalData
    from gradoctor.training.loop import Trainer


class StopRun(Exception):
    """Raised inside the loop to end a run after a non-finite replay (``on_nonfinite: stop``)."""


class NonFiniteGuard:
    def __init__(self, trainer: Trainer):
        self.t = trainer
        cfg = trainer.recipe.diagnostics
        self.snapshot_every = math.ceil(cfg.snapshot_every / cfg.every) * cfg.every
        self.snapshot = Snapshot(trainer.device)
        self.replayed = False
        self.findings: list[dict[str, Any]] = []  # one per replay: step, reason, where
        self.guarding = False  # on_nonfinite: skip, after the replay: drop non-finite updates
        self.calibrated = False  # fp16: a step has gone through since the start
        self.consecutive_skips = 0
        self.can_replay = True  # False under FSDP: sharded state is not snapshotted

    def maybe_snapshot(self) -> None:
        """At a flush boundary: keep the state if this is a snapshot step (cheap, async on CUDA)."""
        t = self.t
        if (
            not self.replayed
            and self.can_replay
            and (t.step_count == t.start_step or t.step_count % self.snapshot_every == 0)
        ):
            self.snapshot.take(t)

    def first_bad_step(
        self, steps: list[int], data: IntervalData, skipped: list[bool]
    ) -> tuple[int, str] | None:
        th = self.t.recipe.diagnostics.thresholds
        fp16 = self.t.scaler.is_enabled()
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

    def handle(self, bad_step: int, reason: str) -> None:
        """Replay ``bad_step`` (once per run) and apply ``on_nonfinite``. May raise StopRun."""
        t = self.t
        if self.replayed:
            return
        self.replayed = True
        mode = t.recipe.diagnostics.on_nonfinite
        record: dict[str, Any] = {"step": bad_step, "reason": reason, "mode": mode}
        if t.ledger is not None:  # distributed: the ranks whose own values were non-finite first
            record["ranks"] = t.ledger.note_nonfinite(bad_step, reason)
        if self.snapshot.state is None or self.snapshot.step >= bad_step:
            record["replay"] = {"phase": "unavailable"}
            self.findings.append(record)
            if mode == "stop":
                raise StopRun
            return
        finding, pre_data, pre_rng = self._replay(bad_step)
        record["replay"] = finding.to_dict()
        if t.ledger is not None:  # each rank replayed its own batch; keep the telling one
            from gradoctor.distributed.aggregate import pick_finding

            record["replay"], record["replay_rank"] = pick_finding(
                record["replay"], record["ranks"]
            )
        self.findings.append(record)
        if mode == "skip":
            t.history.truncate(bad_step - 1)
            t.step_count = bad_step  # its batches are consumed; its update is dropped
            t.history.dropped_steps.append(bad_step)
            self.guarding = True
            return
        t.data.restore(pre_data)
        restore_rng(pre_rng)
        if mode == "continue":
            t.history.truncate(bad_step - 1)
            return
        raise StopRun  # state is the one just before the bad step: that is what gets saved

    def _replay(self, bad_step: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        t = self.t
        self.snapshot.restore(t)
        with self.quiet():
            while t.step_count < bad_step - 1:
                t.step()
        pre_data, pre_rng = t.data.state(), capture_rng()
        accum = t.recipe.train.accum_steps
        batches = [to_device(t.data.next(), t.device) for _ in range(accum)]
        restore_rng(pre_rng)  # the same dropout masks as the real step

        def forward(batch: Any) -> Any:
            with autocast(t.recipe.precision, t.device):
                loss = compute_loss(t.model, batch, t.loss_fn)
            return t.scaler.scale(loss / accum if accum > 1 else loss)

        # Rank-local under DDP: t.model is the unwrapped module, so the replay's forward and
        # backward make no collectives (DDP's gradient hooks stay idle without its forward).
        finding = replay_step(t.model, batches, forward, lambda loss: loss.backward())
        t.optimizer.zero_grad(set_to_none=True)
        return finding, pre_data, pre_rng

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Steps that only re-create state: no instruments, nothing recorded."""
        t = self.t
        t.quiet = True
        try:
            yield
        finally:
            t.quiet = False
            t.buffer.reset()
            for values in t._pending.values():
                values.clear()
