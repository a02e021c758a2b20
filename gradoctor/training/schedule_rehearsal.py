"""Step a copy of the recipe's scheduler through the whole run before training, so that a
schedule that cannot last ``train.steps`` (``OneCycleLR`` with ``total_steps`` below it, a
``ReduceLROnPlateau`` that wants a metric, a scheduler whose own code fails at step k) is
reported before step 1 rather than after step k's update, when the run can no longer end at
a completed step.

The copy is a ``copy.deepcopy`` of the scheduler whose optimizer holds one-element
placeholders instead of the model's parameters and state (nothing large is copied); the
real scheduler and optimizer are untouched. Cost: one ``scheduler.step()`` per remaining
step (OneCycleLR: ~10 µs on CPU), stopped silently after ``budget_s`` seconds.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import torch

from gradoctor.errors import UserCodeError
from gradoctor.recipe.components import user_frames


def rehearse_schedule(
    scheduler: Any, optimizer: torch.optim.Optimizer, start: int, steps: int, budget_s: float = 0.5
) -> None:
    """Raise UserCodeError naming the step at which ``scheduler`` would raise when the run
    goes from step ``start`` to ``steps``; return quietly when it would not, or when it
    cannot be copied (the run then finds out as it goes)."""
    if scheduler is None or start >= steps:
        return
    placeholder = torch.zeros(1)
    memo: dict[int, Any] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            memo[id(p)] = placeholder
    for per_param in optimizer.state.values():
        for value in per_param.values():
            if isinstance(value, torch.Tensor):
                memo[id(value)] = placeholder
    try:
        rehearsal = copy.deepcopy(scheduler, memo)
    except Exception:
        return
    deadline = time.perf_counter() + budget_s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for step in range(start + 1, steps + 1):
            try:
                rehearsal.step()
            except Exception as exc:
                raise UserCodeError(
                    f"the scheduler ({type(scheduler).__name__}) raises after step {step} of "
                    f"the {steps} this run takes: {type(exc).__name__}: {exc}",
                    user_traceback=user_frames(exc),
                    hint="found before training by stepping a copy of it: make the schedule "
                    "last train.steps (e.g. OneCycleLR's total_steps >= train.steps) or lower "
                    "train.steps; the loop calls scheduler.step() with no arguments once per "
                    "applied optimizer step",
                ) from exc
            if time.perf_counter() > deadline:
                return


__all__ = ["rehearse_schedule"]
