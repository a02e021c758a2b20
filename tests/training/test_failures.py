"""The user's error, with a fix where a raw PyTorch message hides a recipe/model mismatch."""

from __future__ import annotations

import pytest

import gradoctor
from gradoctor.errors import UserCodeError
from tests.conftest import MODELS


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"model._component_": f"{MODELS}:TupleOut"}, "returned a tuple where the loss wants"),
        ({"loss.reduction": "none"}, "not a scalar"),
        (
            {
                "model._component_": "torch.nn.Linear",
                "model.in_features": 8,
                "model.out_features": 2,
            },
            "class index outside the model's outputs",
        ),
        ({"loss": None}, "add a 'loss:' block"),
    ],
    ids=["tuple-to-loss", "vector-loss", "labels-out-of-range", "no-loss-block"],
)
def test_common_mismatches_get_a_fix(recipe_factory, changes, says):
    recipe = recipe_factory(**{k: v for k, v in changes.items() if v is not None})
    if changes.get("loss", 0) is None:
        del recipe["loss"]
    with pytest.raises(UserCodeError) as err:
        gradoctor.train(recipe)
    assert says in str(err.value), str(err.value)
    assert err.value.exit_code == 1 and err.value.result.status == "failed"


def test_an_unrelated_error_gets_no_invented_fix():
    from gradoctor.training.failures import mismatch_hint

    assert mismatch_hint(ValueError("Tried to step 4 times"), has_loss=True) is None
    assert mismatch_hint(TypeError("forward() takes 2 positional arguments"), has_loss=True) is None
