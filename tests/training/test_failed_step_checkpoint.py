"""A run that fails in the user's code before a step's update ends at the last completed
step, checkpointed: after the fix, ``--resume`` continues as if nothing had happened
(bitwise against an uninterrupted run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gradoctor
from gradoctor.errors import OutOfMemory, UserCodeError
from gradoctor.training.checkpoint_io import CHECKPOINT_NAME, load_checkpoint
from tests.conftest import MODELS

FAILING = {  # (recipe changes that fail at a step, the key that turns the failure off)
    "data-iterator": (
        {"data._component_": f"{MODELS}:FailingData", "data.at_batch": 4},
        "data.at_batch",
    ),
    "forward-after-batchnorm-and-dropout": (
        {"model._component_": f"{MODELS}:FailingNorm", "model.at": 4},
        "model.at",
    ),
    "forward-drawing-from-python-and-numpy-rngs": (
        {"model._component_": f"{MODELS}:FailingNorm", "model.at": 4, "model.host_rng": True},
        "model.at",
    ),
    "custom-backward": (
        {"model._component_": f"{MODELS}:FailingNorm", "model.at": 4, "model.where": "backward"},
        "model.at",
    ),
    "second-micro-batch-fp16": (
        {
            "data._component_": f"{MODELS}:FailingData",
            "data.at_batch": 8,  # step 4's second micro-batch
            "train.accum_steps": 2,
            "precision": "fp16",
        },
        "data.at_batch",
    ),
}


@pytest.mark.parametrize("case", FAILING)
def test_failed_step_is_undone_checkpointed_and_resumes_bitwise(recipe_factory, case):
    changes, off = FAILING[case]
    common = {
        "train.steps": 8,
        "diagnostics.every": 2,
        "scheduler": {
            "_component_": "torch.optim.lr_scheduler.StepLR",
            "step_size": 2,
            "gamma": 0.5,
        },
    }
    fixed = {**changes, **common, off: 0}
    full = gradoctor.train(recipe_factory(**fixed))

    with pytest.raises(UserCodeError) as err:
        gradoctor.train(recipe_factory(**changes, **common))
    failed = err.value.result
    assert err.value.exit_code == 1 and failed.status == "failed"
    assert failed.steps_completed == 3
    assert "simulated" in str(err.value)  # the user's own error, not gradoctor's
    assert f"--resume {failed.output_dir}" in str(err.value)
    assert f"--resume {failed.output_dir}" in failed.error  # the report says it too
    saved = load_checkpoint(Path(failed.output_dir) / CHECKPOINT_NAME)
    assert saved["step"] == 3
    assert saved["history"]["step"] == [1, 2, 3]

    resumed = gradoctor.train(recipe_factory(**fixed), resume=failed.output_dir)
    assert resumed.history["step"] == list(range(1, 9))
    assert resumed.history["loss"] == full.history["loss"]  # bitwise
    assert resumed.history["lr"] == full.history["lr"]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name  # parameters and BatchNorm buffers


def test_a_simulated_oom_leaves_a_checkpoint_of_the_last_completed_step(recipe_factory):
    with pytest.raises(OutOfMemory) as err:
        gradoctor.train(
            recipe_factory(**{"model._component_": f"{MODELS}:OOMAtCall", "model.at": 3})
        )
    assert err.value.result.steps_completed == 2
    assert load_checkpoint(Path(err.value.result.output_dir) / CHECKPOINT_NAME)["step"] == 2
    assert "--resume" in str(err.value)


def test_a_failure_after_the_update_began_writes_no_checkpoint_and_says_so(recipe_factory):
    with pytest.raises(UserCodeError) as err:
        gradoctor.train(
            recipe_factory(**{"optimizer._component_": f"{MODELS}:FailingSGD", "optimizer.at": 3})
        )
    result = err.value.result
    assert result.steps_completed == 2 and result.status == "failed"
    assert not (Path(result.output_dir) / CHECKPOINT_NAME).exists()
    assert "no checkpoint" in str(err.value) and "--resume" not in str(err.value)


def test_a_failure_in_the_first_step_needs_no_checkpoint(recipe_factory):
    with pytest.raises(UserCodeError) as err:
        gradoctor.train(
            recipe_factory(**{"model._component_": f"{MODELS}:FailingNorm", "model.at": 1})
        )
    assert not (Path(err.value.result.output_dir) / CHECKPOINT_NAME).exists()
    assert "--resume" not in str(err.value)
