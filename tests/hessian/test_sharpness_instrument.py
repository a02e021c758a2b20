"""The sharpness instrument in ``gradoctor train``: values against an independent float64
computation, the trajectory bitwise unchanged, TensorBoard read back, and the failure modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gradoctor
from tests.conftest import MODELS
from tests.hessian.test_recipe_curvature import F, N, regression_recipe


def full_batch(out_dir, **changes):
    """Linear regression, one batch of the whole data set: H = (2/N)·[X 1]ᵀ[X 1] at every step."""
    return regression_recipe(
        out_dir,
        **{"data.batch_size": N, "train.steps": 10, "diagnostics.sharpness_every": 5, **changes},
    )


def data_matrix():
    from gradoctor.data.synthetic import synthetic_regression

    x, y = next(iter(synthetic_regression(batch_size=N, n_samples=N, n_features=F, shuffle=False)))
    return np.concatenate([x.double().numpy(), np.ones((N, 1))], axis=1), y.double().numpy()


def test_sharpness_and_batch_sharpness_match_a_float64_replay_of_the_run(tmp_path):
    result = gradoctor.train(full_batch(tmp_path / "run", **{"optimizer.momentum": 0.5}))
    records = result.history["sharpness"]
    assert [r["step"] for r in records] == [5, 10]
    a, y = data_matrix()
    h = 2.0 / N * a.T @ a
    lam = np.linalg.eigvalsh(h)[-1]
    # the run's own trajectory, replayed in float64 from the recipe's seeded init
    torch.manual_seed(0)
    init = torch.nn.Linear(F, 1)
    w = np.concatenate(
        [init.weight.detach().double().numpy().ravel(), init.bias.detach().double().numpy()]
    )
    buf = np.zeros_like(w)
    for step in range(1, 11):
        g = 2.0 / N * a.T @ (a @ w - y.ravel())
        if step in (5, 10):
            rec = records[step // 5 - 1]
            assert rec["sharpness"] == pytest.approx(lam, rel=1e-5)
            assert rec["batch_sharpness"] == pytest.approx(g @ h @ g / (g @ g), rel=1e-4)
            assert rec["threshold"] == pytest.approx(2 * 1.5 / 0.1)  # heavy ball: 2(1+β)/lr
        buf = 0.5 * buf + g if step > 1 else g
        w = w - 0.1 * buf


def test_tensorboard_holds_the_measurements(tmp_path):
    result = gradoctor.train(full_batch(tmp_path / "run"))
    acc = EventAccumulator(str(result.output_dir), size_guidance={"scalars": 0})
    acc.Reload()
    for tag, key in (
        ("curvature/sharpness", "sharpness"),
        ("curvature/batch_sharpness", "batch_sharpness"),
        ("curvature/threshold", "threshold"),
    ):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [5, 10]
        assert [e.value for e in events] == pytest.approx(
            [r[key] for r in result.history["sharpness"]], rel=1e-6
        )


SETUPS = {
    "batchnorm-dropout-fp16-accumulation-clip": {
        "model._component_": f"{MODELS}:FailingNorm",
        "model.at": 0,
        "precision": "fp16",
        "train.accum_steps": 2,
        "train.clip_grad_norm": 0.5,
    },
    "adamw-bf16-scheduler": {
        "precision": "bf16",
        "optimizer._component_": "torch.optim.AdamW",
        "scheduler": {
            "_component_": "torch.optim.lr_scheduler.StepLR",
            "step_size": 2,
            "gamma": 0.5,
        },
    },
}


@pytest.mark.parametrize("setup", SETUPS)
def test_the_instrument_leaves_the_trajectory_bitwise_unchanged(recipe_factory, setup):
    changes = {**SETUPS[setup], "train.steps": 8, "diagnostics.every": 2}
    off = gradoctor.train(recipe_factory(**changes, **{"diagnostics.sharpness_every": 0}))
    on = gradoctor.train(recipe_factory(**changes, **{"diagnostics.sharpness_every": 2}))
    assert on.history["loss"] == off.history["loss"]
    assert on.history["loss_scale"] == off.history["loss_scale"]
    for (name, a), b in zip(off.model.state_dict().items(), on.model.state_dict().values()):
        assert torch.equal(a, b), name  # parameters and BatchNorm buffers
    measured = [r for r in on.history["sharpness"] if "sharpness" in r]
    assert measured and all(np.isfinite(r["sharpness"]) for r in measured)
    assert not off.history["sharpness"]


def test_adam_measures_the_preconditioned_sharpness_once_it_has_state(recipe_factory):
    result = gradoctor.train(
        recipe_factory(
            **{"train.steps": 4, "diagnostics.every": 2, "diagnostics.sharpness_every": 1}
        )
    )
    records = result.history["sharpness"]
    assert [r["step"] for r in records] == [2, 3, 4]  # step 1: no optimizer state yet
    assert all(r["preconditioned"] for r in records)
    assert records[0]["threshold"] == pytest.approx((2 + 2 * 0.9) / (0.1 * 1e-2))


def test_a_random_loss_stops_the_measurements_and_training_goes_on(recipe_factory):
    result = gradoctor.train(
        recipe_factory(
            **{
                "model._component_": f"{MODELS}:FunctionalDropout",
                "train.steps": 6,
                "diagnostics.every": 2,
                "diagnostics.sharpness_every": 2,
            }
        )
    )
    assert result.status == "completed" and result.steps_completed == 6
    (record,) = result.history["sharpness"]
    assert record["step"] == 2 and "random" in record["error"]
