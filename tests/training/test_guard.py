"""The non-finite guard: detection on host values, and the replay's decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradoctor.monitors.interval import IntervalData
from gradoctor.recipe.schema import DiagnosticsConfig
from gradoctor.training.guard import NonFiniteGuard
from gradoctor.training.step import StepConfig, TrainStep
from tests.assets.train_models import NaNAtStep, fixed_data
from tests.training.conftest import make_state


def _data(loss, norms, scale=None):
    n = len(loss)
    return IntervalData(
        np.asarray(loss, float),
        np.asarray(scale if scale is not None else [1.0] * n, float),
        np.asarray(norms, float),
        np.zeros(2),
        np.zeros(2),
    )


def _guard(fp16=False, **cfg):
    import torch

    return NonFiniteGuard(DiagnosticsConfig(**cfg), torch.device("cpu"), fp16=fp16)


def test_first_bad_step_fp32():
    g = _guard()
    assert g.first_bad_step([1, 2, 3], _data([1, 2, 3], [[1, 1]] * 3), [False] * 3) is None
    data = _data([1, 2, math.nan], [[1, 1], [1, math.inf], [1, 1]])
    assert g.first_bad_step([4, 5, 6], data, [False] * 3) == (5, "gradient")
    data = _data([math.nan, 2, 3], [[1, 1], [1, math.inf], [1, 1]])
    assert g.first_bad_step([4, 5, 6], data, [False] * 3) == (4, "loss")


def test_first_bad_step_fp16_calibration_is_not_a_failure():
    """Early skips while the scale calibrates are normal; a collapsed scale is not."""
    g = _guard(fp16=True)
    inf = [[math.inf, 1]]
    assert g.first_bad_step([1, 2], _data([1, 1], inf * 2, [32768, 16384]), [True, True]) is None
    assert g.first_bad_step([3], _data([1], [[1, 1]], [16384]), [False]) is None
    collapsed = _data([1], inf, [0.5])
    assert g.first_bad_step([4], collapsed, [True]) == (4, "overflow")


@pytest.mark.parametrize(("mode", "action"), [("stop", "stop"), ("skip", "report")])
def test_without_a_snapshot_the_finding_is_reported(mode, action):
    g = _guard(on_nonfinite=mode)
    state = make_state()
    decision = g.handle(3, "loss", state, StepConfig("fp32"), rerun=lambda: None)
    assert decision.action == action and decision.record["replay"] == {"phase": "unavailable"}
    assert g.handle(3, "loss", state, StepConfig("fp32"), rerun=lambda: None) is None  # once


@pytest.mark.parametrize("mode", ["stop", "skip", "continue"])
def test_replay_names_the_module_and_decides(mode):
    """NaNAtStep's loss turns NaN at step 8 inside ``gate`` (see its docstring)."""
    state = make_state(model=NaNAtStep(), lr=0.15, data=fixed_data(batch_size=8))
    state.loss_fn = None
    config = StepConfig("fp32")
    step = TrainStep(state, config)
    g = _guard(on_nonfinite=mode)
    g.snapshot_every = 5
    losses = []
    for _ in range(8):
        losses.append(float(step.run().loss))
        if state.step % 5 == 0:
            g.maybe_snapshot(state)
    assert math.isnan(losses[7]) and all(math.isfinite(v) for v in losses[:7])
    reruns = []

    def rerun():
        reruns.append(state.step + 1)
        step.run()

    decision = g.handle(8, "loss", state, config, rerun)
    assert reruns == [6, 7]  # from the snapshot at step 5 up to the step before the bad one
    assert decision.action == mode
    replay = decision.record["replay"]
    assert replay["phase"] == "forward" and replay["module"] == "gate"
    assert state.step == (8 if mode == "skip" else 7)
    if mode != "skip":  # the state is just before the bad step: it fails again the same way
        assert math.isnan(float(step.run().loss))
