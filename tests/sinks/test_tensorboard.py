"""TensorBoard events read back with tensorboard's EventAccumulator match the report."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gradoctor
from tests.conftest import MODELS


def _events(run_dir):
    acc = EventAccumulator(
        str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def test_scalars_match_the_report(recipe_factory):
    result = gradoctor.train(
        recipe_factory(precision="fp16", **{"train.steps": 10, "diagnostics.every": 5})
    )
    acc = _events(result.output_dir)
    tags = set(acc.Tags()["scalars"])
    assert {
        "loss",
        "lr",
        "loss_scale",
        "grad_norm/total",
        "grad_norm/body.0",
        "grad_norm/head",
        "update_ratio/head",
        "time/step_s",
        "memory/params",
        "memory/saved_for_backward",
    } <= tags
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == list(range(1, 11))
    assert [e.value for e in loss] == pytest.approx(result.history["loss"], rel=1e-6)
    head = acc.Scalars("grad_norm/head")
    assert [e.step for e in head] == [5, 10]
    names = result.history["module_names"]
    assert head[-1].value == pytest.approx(
        result.history["module_grad_norms"][-1][names.index("head")], rel=1e-6
    )
    assert acc.Scalars("loss_scale")[-1].value == result.loss_scale
    assert acc.Scalars("update_ratio/head")[-1].value == pytest.approx(
        result.update_ratios["head"], rel=1e-6
    )


def test_histograms_are_nan_safe(recipe_factory):
    result = gradoctor.train(
        recipe_factory(
            precision="fp16",
            **{
                "model._component_": f"{MODELS}:OverflowAt",
                "model.bad_calls": [4],
                "train.steps": 4,
                "diagnostics.histogram_every": 2,
            },
        )
    )
    acc = _events(result.output_dir)
    assert {"grad_hist/body", "grad_hist/head"} <= set(acc.Tags()["histograms"])
    assert [e.step for e in acc.Histograms("grad_hist/head")] == [2, 4]
    nonfinite = acc.Scalars("grad_hist_nonfinite/body")
    assert [e.step for e in nonfinite] == [4] and nonfinite[0].value > 0
    assert result.skipped_steps == [4]


def test_overwrite_replaces_old_events(recipe_factory):
    recipe = recipe_factory(**{"train.steps": 3, "diagnostics.every": 1})
    gradoctor.train(recipe)
    result = gradoctor.train(recipe, overwrite=True)
    from pathlib import Path

    assert len(list(Path(result.output_dir).glob("events.out.tfevents.*"))) == 1
    assert [e.step for e in _events(result.output_dir).Scalars("loss")] == [1, 2, 3]
