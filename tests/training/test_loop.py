"""The loop: a new instrument is added without editing it, its values reach TensorBoard, and
it leaves the run's numbers unchanged."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gradoctor
from gradoctor.errors import RecipeError
from gradoctor.monitors.instrument import Instrument
from gradoctor.recipe import load_recipe
from gradoctor.training.loop import Trainer


class WeightNorm(Instrument):
    """A stand-in for a new instrument (the curvature issue's sharpness): a device value on
    every 2nd step, kept without a sync, written at the flush to the last step's event."""

    name = "weight_norm"

    def __init__(self):
        self.kept: list[tuple[int, torch.Tensor]] = []
        self.flushes = 0

    def active(self, step):
        return step % 2 == 0

    def after_update(self, view):
        norm = torch.linalg.vector_norm(
            torch.cat([p.detach().flatten() for p in view.model.parameters()])
        )
        self.kept.append((view.step, norm))

    def flush(self, interval):
        self.flushes += 1
        if self.kept:
            interval.last_scalars["weight_norm"] = float(self.kept[-1][1])
        self.kept.clear()


def _run(recipe_factory, extra: list[Instrument]):
    recipe = load_recipe(recipe_factory(**{"train.steps": 10, "diagnostics.every": 5}))
    trainer = Trainer(recipe)
    trainer.instruments += extra
    return trainer.run(), trainer


def test_a_new_instrument_plugs_in_without_editing_the_loop(recipe_factory):
    inst = WeightNorm()
    result, trainer = _run(recipe_factory, [inst])
    assert inst.flushes == 2
    acc = EventAccumulator(result.output_dir, size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("weight_norm")
    assert [e.step for e in events] == [5, 10]
    want = torch.linalg.vector_norm(
        torch.cat([p.detach().flatten() for p in result.model.parameters()])
    )
    assert events[-1].value == float(want)  # written at step 10 after its update: the final weights
    plain, _ = _run(recipe_factory, [])
    assert result.history["loss"] == plain.history["loss"]  # bitwise: nothing perturbed


def test_no_hooks_left_behind(recipe_factory):
    result, trainer = _run(recipe_factory, [])
    model = result.model
    assert not trainer.state.optimizer._optimizer_step_post_hooks
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


@pytest.mark.parametrize("under", ["afile", "afile/sub"])
def test_an_output_dir_that_cannot_be_created_is_a_recipe_error(recipe_factory, tmp_path, under):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(RecipeError) as err:
        gradoctor.train(recipe_factory(**{"output.dir": str(tmp_path / under)}))
    assert err.value.exit_code == 2 and "output.dir" in str(err.value)
