"""A scheduler that cannot last the run is reported before step 1 (exit 1, report written,
nothing trained), by stepping a copy of it; a healthy one is left untouched."""

from __future__ import annotations

import pytest
import torch

import gradoctor
from gradoctor.errors import UserCodeError
from gradoctor.training.schedule_rehearsal import rehearse_schedule
from tests.conftest import MODELS

BROKEN = {
    "onecycle-total-steps-too-small": (
        {"_component_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": 0.1, "total_steps": 3},
        4,
        "total steps is 3",
    ),
    "plateau-wants-a-metric": (
        {"_component_": "torch.optim.lr_scheduler.ReduceLROnPlateau"},
        1,
        "metrics",
    ),
    "own-code-fails-at-step-6": (
        {"_component_": f"{MODELS}:FailingScheduler", "at": 6},
        6,
        "simulated",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_schedule_that_cannot_last_the_run_fails_before_step_one(recipe_factory, case):
    scheduler, at, says = BROKEN[case]
    with pytest.raises(UserCodeError) as err:
        gradoctor.train(recipe_factory(scheduler=scheduler))
    assert f"after step {at} of the 10" in str(err.value) and says in str(err.value)
    assert err.value.result.status == "failed" and err.value.result.steps_completed == 0


def test_the_rehearsal_starts_at_the_resumed_step(recipe_factory):
    scheduler = {
        "_component_": "torch.optim.lr_scheduler.OneCycleLR",
        "max_lr": 0.1,
        "total_steps": 10,
    }
    first = gradoctor.train(recipe_factory(scheduler=scheduler, **{"train.steps": 10}))
    with pytest.raises(UserCodeError) as err:  # 5 more steps than the schedule has
        gradoctor.train(
            recipe_factory(scheduler=scheduler, **{"train.steps": 15}), resume=first.output_dir
        )
    assert "after step 11 of the 15" in str(err.value)


def test_the_rehearsal_leaves_the_real_scheduler_and_optimizer_bitwise_untouched():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()  # optimizer state exists (a resumed run)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50)
    before_sched, before_opt = sched.state_dict(), opt.state_dict()
    exp_avg = opt.state[model.weight]["exp_avg"]
    before_avg = exp_avg.clone()
    rehearse_schedule(sched, opt, start=0, steps=50)
    assert sched.state_dict() == before_sched
    assert opt.param_groups[0]["lr"] == before_opt["param_groups"][0]["lr"]
    assert opt.state[model.weight]["exp_avg"] is exp_avg and torch.equal(exp_avg, before_avg)
    with pytest.raises(UserCodeError, match="after step 51 of the 51"):
        rehearse_schedule(sched, opt, start=0, steps=51)
