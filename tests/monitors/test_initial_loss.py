"""The first step's loss against the loss at chance (monitors/initial_loss.py), against the
analytic values: ln C, ln 2, the targets' variance, their mean absolute deviation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradoctor
from gradoctor.monitors.initial_loss import chance_prediction

OUT = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
Y_CLASS = torch.randint(0, 5, (32,), generator=torch.Generator().manual_seed(1))
Y_REAL = torch.randn(32, 5, generator=torch.Generator().manual_seed(2)) * 3 + 1


def chance(loss_fn, out, y):
    guess = chance_prediction(loss_fn, out, y)
    return None if guess is None else float(loss_fn(guess[0], y))


@pytest.mark.parametrize(
    ("loss_fn", "out", "y", "truth"),
    [
        (nn.CrossEntropyLoss(), OUT, Y_CLASS, math.log(5)),
        (nn.CrossEntropyLoss(label_smoothing=0.2), OUT, Y_CLASS, math.log(5)),
        (nn.NLLLoss(), OUT, Y_CLASS, math.log(5)),
        (nn.BCEWithLogitsLoss(), OUT, (Y_REAL > 1).float(), math.log(2)),
        (nn.MSELoss(), OUT, Y_REAL, float(((Y_REAL - Y_REAL.mean()) ** 2).mean())),
        (nn.L1Loss(), OUT, Y_REAL, float((Y_REAL - Y_REAL.median()).abs().mean())),
    ],
    ids=["cross-entropy", "label-smoothing", "nll", "bce-logits", "mse-variance", "l1-mad"],
)
def test_chance_matches_the_analytic_value(loss_fn, out, y, truth):
    assert chance(loss_fn, out, y) == pytest.approx(truth, rel=1e-5)


def test_unknown_losses_are_not_measured():
    assert chance_prediction(nn.KLDivLoss(), OUT, Y_REAL) is None
    assert chance_prediction(nn.MSELoss(), OUT, Y_CLASS) is None  # integer targets


def test_a_run_records_its_first_loss_next_to_chance(recipe_factory):
    result = gradoctor.train(recipe_factory(**{"train.steps": 3, "diagnostics.every": 1}))
    first = result.history["initial_loss"]
    assert first["chance"] == pytest.approx(math.log(3), rel=1e-6)  # Tiny: 3 classes
    assert first["loss"] == result.history["loss"][0]  # the same micro-batch's loss, bitwise
    assert first["rule"] == "uniform logits" and first["loss_fn"] == "CrossEntropyLoss"


def test_no_loss_block_and_resumed_runs_are_not_measured(recipe_factory):
    from tests.conftest import MODELS

    recipe = recipe_factory(
        **{"model._component_": f"{MODELS}:DictModel", "data.as_dict": True, "train.steps": 2}
    )
    del recipe["loss"]
    assert gradoctor.train(recipe).history["initial_loss"] == {}
    first = gradoctor.train(recipe_factory(**{"train.steps": 2}))
    resumed = gradoctor.train(recipe_factory(**{"train.steps": 4}), resume=first.output_dir)
    assert resumed.history["initial_loss"] == first.history["initial_loss"]  # kept, not re-measured
