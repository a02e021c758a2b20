"""The run state: a state_dict round trip resumes bitwise; unknown formats fail clearly."""

from __future__ import annotations

import copy

import pytest
import torch

from gradoctor.errors import UsageError
from gradoctor.training.state import CHECKPOINT_FORMAT, TrainState
from gradoctor.training.step import StepConfig, TrainStep
from tests.training.conftest import make_state


def _losses(state: TrainState, n: int) -> list[float]:
    step = TrainStep(state, StepConfig("fp32", accum_steps=2))
    try:
        return [float(step.run().loss) for _ in range(n)]
    finally:
        step.close()


def test_state_dict_round_trip_is_bitwise():
    """Steps 3..6 after loading the state saved at step 2 equal an uninterrupted run's
    (weights, Adam moments, scheduler, RNG, data position: a shuffled epoch boundary inside)."""
    full = make_state(scheduler=True, optimizer=torch.optim.Adam)
    want = _losses(full, 6)
    first = make_state(scheduler=True, optimizer=torch.optim.Adam)
    _losses(first, 2)
    saved = copy.deepcopy(first.state_dict())
    assert saved["format"] == CHECKPOINT_FORMAT and saved["step"] == 2
    resumed = make_state(scheduler=True, optimizer=torch.optim.Adam)
    torch.manual_seed(999)  # a different RNG: the state must bring its own
    resumed.load_state_dict(saved)
    assert resumed.step == 2
    assert _losses(resumed, 4) == want[2:]


@pytest.mark.parametrize("change", [{"format": 99}, {"format": 0}, {"model": None}])
def test_unknown_format_is_a_clear_error(change):
    state = make_state()
    saved = state.state_dict()
    saved.update(change)
    if change.get("model", 1) is None:
        del saved["model"]
    with pytest.raises(UsageError) as err:
        make_state().load_state_dict(saved)
    assert f"format {CHECKPOINT_FORMAT}" in str(err.value)


def test_a_changed_model_is_named_with_the_parameter():
    saved = make_state().state_dict()
    other = make_state(model=torch.nn.Linear(3, 5))
    with pytest.raises(UsageError) as err:
        other.load_state_dict(saved)
    text = str(err.value)
    assert "model (Linear)" in text and "weight" in text and "recipe.yaml" in text


@pytest.mark.parametrize("other", [torch.optim.SGD, torch.optim.Adagrad])
def test_a_checkpoint_of_another_optimizer_is_refused_before_it_breaks_a_step(other):
    """Adam's state loads into SGD without error and fails at its first step (KeyError:
    'momentum'): the hyperparameter names, different on both sides, tell it first."""
    saved = make_state(optimizer=torch.optim.Adam).state_dict()
    with pytest.raises(UsageError) as err:
        make_state(optimizer=other).load_state_dict(saved)
    assert f"optimizer ({other.__name__})" in str(err.value) and "betas" in str(err.value)


def test_a_missing_hyperparameter_alone_is_not_a_mismatch():
    """A checkpoint from a torch that lacked one newer hyperparameter still loads."""
    saved = copy.deepcopy(make_state(optimizer=torch.optim.Adam).state_dict())
    for group in saved["optimizer"]["param_groups"]:
        group.pop("maximize")
    make_state(optimizer=torch.optim.Adam).load_state_dict(saved)
