"""``gradoctor curvature`` on recipes: the Hessian of the training loss over the run's first
batches, against a dense float64 truth built independently from the data, and the stability
verdict against the optimizer's analytic threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import gradoctor
from gradoctor.cli import app
from gradoctor.data.synthetic import synthetic_regression
from gradoctor.errors import UsageError

F, B, N = 6, 16, 256  # features, batch size, data set size (16 batches per epoch)


def regression_recipe(out_dir, **changes):
    recipe = {
        "model": {"_component_": "torch.nn.Linear", "in_features": F, "out_features": 1},
        "data": {
            "_component_": "gradoctor.data.synthetic_regression",
            "batch_size": B,
            "n_samples": N,
            "n_features": F,
            "shuffle": False,
        },
        "loss": {"_component_": "torch.nn.MSELoss"},
        "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1},
        "precision": "fp32",
        "train": {"steps": 5, "seed": 0, "device": "cpu"},
        "diagnostics": {"every": 5},
        "output": {"dir": str(out_dir)},
    }
    for key, value in changes.items():
        node = recipe
        *head, last = key.split(".")
        for part in head:
            node = node[part]
        node[last] = value
    return recipe


def dense_hessian(batches: int) -> np.ndarray:
    """MSE of a linear model: each batch's Hessian is (2/B)·[X 1]ᵀ[X 1], whatever the weights;
    the loss analysed is the mean over batches."""
    loader = synthetic_regression(batch_size=B, n_samples=N, n_features=F, shuffle=False)
    hs = []
    for i, (x, _) in enumerate(loader):
        if i == batches:
            break
        a = np.concatenate([x.double().numpy(), np.ones((B, 1))], axis=1)
        hs.append(2.0 / B * a.T @ a)
    return np.mean(hs, axis=0)


def test_eigenvalues_trace_and_sgd_stability_match_the_dense_hessian(tmp_path):
    result = gradoctor.curvature(
        regression_recipe(tmp_path / "run"), top_k=3, trace=True, batches=4
    )
    truth = np.linalg.eigvalsh(dense_hessian(4))[::-1]
    np.testing.assert_allclose(result.eigenvalues, truth[:3], rtol=1e-5)
    assert max(result.residuals) < 1e-3
    # P = 7 < the trace budget: Hutch++ is exact here (the sketch spans the whole space)
    assert result.trace.estimate == pytest.approx(truth.sum(), rel=1e-4)
    s = result.stability
    assert s["threshold"] == pytest.approx(2 / 0.1) and not s["preconditioned"]
    assert s["sharpness"] == pytest.approx(truth[0], rel=1e-5)
    assert s["ratio"] == pytest.approx(truth[0] / 20, rel=1e-5)
    assert s["max_stable_lr"] == pytest.approx(2 / truth[0], rel=1e-5)
    assert result.batches == 4 and result.parameters == F + 1


def test_batches_all_is_one_epoch(tmp_path):
    result = gradoctor.curvature(regression_recipe(tmp_path / "run"), batches="all")
    assert result.batches == N // B
    assert result.eigenvalues[0] == pytest.approx(
        np.linalg.eigvalsh(dense_hessian(N // B))[-1], rel=1e-5
    )


def test_adam_checkpoint_gives_the_preconditioned_sharpness(tmp_path):
    recipe = regression_recipe(
        tmp_path / "run", **{"optimizer._component_": "torch.optim.Adam", "optimizer.lr": 0.01}
    )
    trained = gradoctor.train(recipe)
    fresh = gradoctor.curvature(recipe)
    assert fresh.stability["sharpness"] is None and "--checkpoint" in fresh.stability["note"]

    result = gradoctor.curvature(recipe, checkpoint=trained.output_dir, batches=2)
    state = torch.load(f"{trained.output_dir}/checkpoint.pt", weights_only=True)["optimizer"]
    b1, b2, eps = 0.9, 0.999, 1e-8
    d = []
    for idx in (0, 1):  # weight [1, F], bias [1]: named_parameters order = optimizer order
        st = state["state"][idx]
        t = float(st["step"])
        v_hat = st["exp_avg_sq"].double().reshape(-1) / (1 - b2**t)
        d.append((1 - b1**t) * (v_hat.sqrt() + eps))
    d = torch.cat(d).numpy()
    h = dense_hessian(2)
    pre = h / np.sqrt(np.outer(d, d))  # D^-1/2 H D^-1/2: the eigenvalues of P^-1 H
    truth = np.linalg.eigvalsh(pre)[-1]
    s = result.stability
    assert s["preconditioned"] and s["threshold"] == pytest.approx((2 + 2 * b1) / ((1 - b1) * 0.01))
    assert s["sharpness"] == pytest.approx(truth, rel=1e-4)
    assert "at step 5" in result.notes[0]


def test_bf16_recipe_reports_the_difference_to_fp32(tmp_path):
    result = gradoctor.curvature(regression_recipe(tmp_path / "run", precision="bf16"))
    (note,) = [n for n in result.notes if "bf16" in n]
    assert "% from fp32" in note
    assert result.precision == "fp32"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"batches": 0}, "--batches must be"),
        ({"batches": "two"}, "--batches must be"),
        ({"batches": 17}, "one epoch of the recipe's data has 16"),
        ({"top_k": 7}, "P=7"),
        ({"checkpoint": "nowhere"}, "no checkpoint at"),
        ({"steps": 3}, "curvature()"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, options, says):
    with pytest.raises(UsageError) as err:
        gradoctor.curvature(regression_recipe(tmp_path / "run"), **options)
    assert says in str(err.value) and err.value.exit_code == 2


def test_a_checkpoint_of_another_model_is_a_usage_error(tmp_path):
    trained = gradoctor.train(regression_recipe(tmp_path / "a"))
    wider = regression_recipe(
        tmp_path / "b", **{"model.in_features": F + 1, "data.n_features": F + 1}
    )
    with pytest.raises(UsageError, match="does not match"):
        gradoctor.curvature(wider, checkpoint=trained.output_dir)


def test_cli_prints_the_report_and_writes_the_json_contract(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(regression_recipe(tmp_path / "run")))
    out = CliRunner().invoke(
        app,
        ["curvature", "--top-k", "2", "--trace", "--per-layer", "--density", "--json", "c.json"],
    )
    assert out.exit_code == 0, out.output
    assert "Top eigenvalues" in out.output and "stability at lr 0.1" in out.output
    data = json.loads((tmp_path / "c.json").read_text())
    assert set(data) >= {
        "eigenvalues",
        "residuals",
        "hvps",
        "method",
        "trace",
        "density",
        "per_layer",
        "batches",
        "precision",
        "stability",
    }
    assert set(data["trace"]) == {"estimate", "stderr", "samples", "method"}
    assert set(data["stability"]) >= {"lr", "threshold", "rule"}
    assert list(data["per_layer"]) == [""] or list(data["per_layer"]) == ["<root>"]
    assert len(data["density"]["grid"]) == len(data["density"]["values"])
    bad = CliRunner().invoke(app, ["curvature", "--batches", "0"])
    assert bad.exit_code == 2
