"""The replay snapshot: restore puts the state back bitwise, fp16 scaler included."""

from __future__ import annotations

import torch

from gradoctor.training.snapshot import Snapshot
from gradoctor.training.step import StepConfig, TrainStep
from tests.training.conftest import linear_batches, make_state


def test_restore_replays_the_same_steps_bitwise():
    state = make_state(scheduler=True, optimizer=torch.optim.Adam)
    step = TrainStep(state, StepConfig("fp32"))
    step.run()
    snap = Snapshot(state.device)
    snap.take(state)
    first = [float(step.run().loss) for _ in range(4)]
    weights = [p.detach().clone() for p in state.model.parameters()]
    snap.restore(state)
    assert state.step == 1
    assert [float(step.run().loss) for _ in range(4)] == first
    assert all(torch.equal(p, q) for p, q in zip(state.model.parameters(), weights))


def test_snapshot_buffers_are_copies():
    state = make_state()
    snap = Snapshot(state.device)
    snap.take(state)
    kept = snap.state["model"]["weight"]
    with torch.no_grad():
        state.model.weight.add_(1.0)
    assert not torch.equal(kept, state.model.weight)


def test_fp16_scaler_live_scale_is_restored():
    """The scale lives on the device; after an overflow halves it, restore brings it back."""
    data = linear_batches(2) + [(torch.full((4, 3), 1e30), torch.zeros(4, 2))]
    state = make_state(precision="fp16", data=data)
    step = TrainStep(state, StepConfig("fp16"))
    step.run()
    at_snapshot = state.scaler.get_scale()
    snap = Snapshot(state.device)
    snap.take(state)
    step.run()
    assert step.run().skipped and state.scaler.get_scale() < at_snapshot
    snap.restore(state)
    assert state.scaler.get_scale() == at_snapshot and state.step == 1


def test_snapshot_before_the_first_step_resets_the_lazy_scale():
    state = make_state(precision="fp16")
    snap = Snapshot(state.device)
    snap.take(state)  # the scaler has no live scale yet
    assert snap.state["scaler_live"] is None
    step = TrainStep(state, StepConfig("fp16"))
    step.run()
    snap.restore(state)
    assert state.scaler._scale is None and state.step == 0
