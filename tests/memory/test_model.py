"""The replay and the batch fit against real measured steps (tracked bytes on CPU)."""

import pytest

from gradoctor.memory.measure import Config, ProfileSession
from gradoctor.memory.model import Line, fit_peak_model, replay
from gradoctor.recipe import load_recipe
from gradoctor.training.activation_checkpointing import checkpoint_targets
from tests.memory.conftest import memory_recipe


@pytest.fixture(scope="module")
def stack_session():
    session = ProfileSession(load_recipe(memory_recipe("Stack", **{"model.depth": 4})))
    session.step(Config("fp32", (), 16), track=True)  # optimizer state now exists
    return session


def _trace(session, batch, names=()):
    assert session.can_resize(batch)
    return session.step(Config("fp32", tuple(names), batch), track=True).trace


def test_replay_without_checkpointing_is_the_measured_curve(stack_session):
    trace = _trace(stack_session, 16)
    assert replay(trace).peak == trace.peak()[0]


@pytest.mark.parametrize("names", [["Block"], ["blocks.1", "blocks.3"], ["blocks"]])
def test_checkpoint_replay_predicts_the_measured_peak(stack_session, names):
    traces = {b: _trace(stack_session, b) for b in (8, 16)}
    targets, _ = checkpoint_targets(stack_session.model, names)  # what the loop wraps
    model = fit_peak_model(traces, targets, None)
    for batch in (8, 16, 64):
        measured = _trace(stack_session, batch, names).peak()[0]
        assert model(batch) == pytest.approx(measured, rel=0.01), (names, batch)


def test_batch_fit_is_linear_and_extrapolates(stack_session):
    traces = {b: _trace(stack_session, b) for b in (4, 8)}
    model = fit_peak_model(traces, [], None)
    assert model.curves is not None  # the two steps pair up event by event
    for batch in (32, 128):
        assert model(batch) == pytest.approx(_trace(stack_session, batch).peak()[0], rel=0.005)


def test_line_through_points():
    line = Line.through([(2, 300.0), (6, 700.0)])
    assert (line.fixed, line.per_sample) == pytest.approx((100.0, 100.0))
    assert Line.through([(4, 50.0)])(100) == 50.0


def test_max_batch_is_the_largest_that_fits(stack_session):
    traces = {b: _trace(stack_session, b) for b in (8, 16)}
    model = fit_peak_model(traces, [], None)
    budget = model(40)
    assert model.max_batch(budget) == 40
    assert model.max_batch(model(1) - 1) == 0
