"""Checkpoint/resume reproduces the uninterrupted run bitwise on CPU."""

import signal

import pytest
import torch

import gradoctor
from gradoctor.errors import TrainingInterrupted, UsageError
from tests.conftest import MODELS

SETUPS = {
    "fp32-dropout-shuffle-scheduler": {
        "model.dropout": 0.2,
        "data.shuffle": True,
        "scheduler": {
            "_component_": "torch.optim.lr_scheduler.StepLR",
            "step_size": 3,
            "gamma": 0.7,
        },
    },
    "fp16-accum-clip": {
        "precision": "fp16",
        "data.shuffle": True,
        "train.accum_steps": 3,
        "train.clip_grad_norm": 0.5,
        "grad_scaler": {"growth_interval": 4},
    },
}


@pytest.mark.parametrize("setup", SETUPS)
def test_resumed_run_matches_uninterrupted_bitwise(recipe_factory, setup):
    changes = SETUPS[setup]
    full = gradoctor.train(recipe_factory(**changes, **{"train.steps": 20}))
    first = gradoctor.train(recipe_factory(**changes, **{"train.steps": 11}))  # stops mid-epoch
    resumed = gradoctor.train(
        recipe_factory(**changes, **{"train.steps": 20}), resume=first.output_dir
    )
    assert resumed.start_step == 11
    assert resumed.history["step"] == list(range(1, 21))
    assert resumed.history["loss"] == full.history["loss"]  # bitwise: float equality
    assert resumed.history["lr"] == full.history["lr"]
    assert resumed.history["loss_scale"] == full.history["loss_scale"]
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_ctrl_c_stops_at_a_step_boundary_and_resumes_exactly(recipe_factory):
    changes = {"model.dropout": 0.1, "train.steps": 12}
    full = gradoctor.train(
        recipe_factory(
            **changes, **{"data._component_": f"{MODELS}:InterruptingData", "data.at_batch": 10**6}
        )
    )
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as err:
        gradoctor.train(
            recipe_factory(
                **changes, **{"data._component_": f"{MODELS}:InterruptingData", "data.at_batch": 7}
            )
        )
    assert signal.getsignal(signal.SIGINT) is before
    stopped = err.value.result
    assert stopped.status == "interrupted" and stopped.steps_completed == 7
    assert err.value.exit_code == 130
    resumed = gradoctor.train(
        recipe_factory(
            **changes, **{"data._component_": f"{MODELS}:InterruptingData", "data.at_batch": 10**6}
        ),
        resume=stopped.output_dir,
    )
    assert resumed.history["loss"] == full.history["loss"]


def test_resume_from_a_folder_without_checkpoint_is_a_usage_error(recipe_factory, tmp_path):
    with pytest.raises(UsageError, match="no checkpoint"):
        gradoctor.train(recipe_factory(), resume=tmp_path / "nothing-here")


def test_checkpoint_is_written_atomically_and_loads_weights_only(recipe_factory):
    result = gradoctor.train(recipe_factory(**{"train.steps": 4, "train.checkpoint_every": 2}))
    from pathlib import Path

    out = Path(result.output_dir)
    assert not list(out.glob(".*.tmp"))  # no temp files left behind
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4
    assert set(state) >= {"model", "optimizer", "scaler", "scheduler", "rng", "data", "step"}


OLD_CHECKPOINT = MODELS.parent / "checkpoints" / "format1_602e1e1_tiny_fp16.pt"


def test_a_checkpoint_written_before_the_run_state_refactor_resumes_bitwise(recipe_factory):
    """``tests/assets/checkpoints/format1_602e1e1_tiny_fp16.pt`` was written by gradoctor at
    602e1e1 (before TrainState) after 5 steps of this recipe; resuming it to step 10 gives
    the uninterrupted run's losses and loss scales bitwise."""
    changes = {"precision": "fp16", "model.dropout": 0.2, "data.shuffle": True}
    full = gradoctor.train(recipe_factory(**changes, **{"train.steps": 10}))
    resumed = gradoctor.train(
        recipe_factory(**changes, **{"train.steps": 10}), resume=OLD_CHECKPOINT
    )
    assert resumed.start_step == 5
    assert resumed.history["loss"] == full.history["loss"]
    assert resumed.history["loss_scale"] == full.history["loss_scale"]


def test_resume_from_a_periodic_checkpoint_has_no_gap(recipe_factory):
    """checkpoint_every 7 with a log interval of 5: the run fails at step 9 after its update
    began (no failure checkpoint), so checkpoint.pt is step 7's; resumed, the history holds every step once, and the losses
    are the uninterrupted run's (the interval is flushed before each periodic save)."""
    base = {"train.checkpoint_every": 7, "diagnostics.every": 5, "train.steps": 12}
    failing = {
        **base,
        "optimizer._component_": f"{MODELS}:FailingSGD",
        "optimizer.at": 9,
        "optimizer.lr": 1e-2,
    }
    base = {**base, "optimizer._component_": f"{MODELS}:FailingSGD", "optimizer.at": 0}
    full = gradoctor.train(recipe_factory(**base))
    with pytest.raises(gradoctor.UserCodeError) as err:
        gradoctor.train(recipe_factory(**failing))
    run = err.value.result.output_dir
    resumed = gradoctor.train(recipe_factory(**base), resume=run)
    assert resumed.start_step == 7
    assert resumed.history["step"] == list(range(1, 13))
    assert resumed.history["loss"] == full.history["loss"]
