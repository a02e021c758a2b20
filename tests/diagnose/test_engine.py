"""The engine: every rule over a run, a failing rule reported, and ``diagnose_run`` (what the
training loop is given) reading the typed ``History`` as the report holds it."""

import math

import numpy as np
import pytest
import torch

import gradoctor
from gradoctor.diagnose import engine
from gradoctor.diagnose.context import module_infos
from gradoctor.diagnose.engine import diagnose, diagnose_run
from gradoctor.training.history import MAX_STEP_POINTS, History
from tests.diagnose.rules.synthetic import codes, context, ctx, history


def test_healthy_history_is_silent():
    assert codes(ctx()) == []


def test_a_broken_rule_does_not_lose_the_report(monkeypatch):
    from gradoctor.diagnose.rules import dead_units

    monkeypatch.setattr(dead_units, "check", lambda c: 1 / 0)
    d = diagnose(ctx())
    assert d[0]["code"] == "internal" and d[0]["severity"] == "info"
    assert d[0]["message"] == "rule dead_units failed: ZeroDivisionError: division by zero"
    assert set(d[0]) == {"code", "severity", "modules", "steps", "message", "evidence", "fix"}


@pytest.mark.parametrize("bad", [{"dead_fraction": -1}, {"nope": 1}])
def test_thresholds_are_validated(bad):
    from gradoctor.errors import RecipeError

    recipe = {
        "model": {"_component_": "torch.nn.Linear", "in_features": 2, "out_features": 2},
        "data": {"_component_": "builtins.list"},
        "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1},
        "diagnostics": {"thresholds": bad},
    }
    with pytest.raises(RecipeError) as err:
        gradoctor.validate(recipe)
    assert err.value.problems[0].path.startswith("diagnostics.thresholds.")


def _model_and_recipe():
    """Three Linear layers named like ``MODULES`` and an fp16 recipe with its own scaler."""
    model = torch.nn.Sequential()
    for name in ("l0", "l1", "l2"):
        model.add_module(name, torch.nn.Linear(10, 10))
    recipe = gradoctor.validate(
        {
            "model": {"_component_": "torch.nn.Linear", "in_features": 2, "out_features": 2},
            "data": {"_component_": "builtins.list"},
            "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1},
            "precision": "fp16",
            "grad_scaler": {"growth_interval": 50, "backoff_factor": 0.25},
            "diagnostics": {"thresholds": {"overflow_tolerance": 1}},
        }
    )
    return model, recipe


def test_diagnose_run_is_the_rules_over_the_runs_own_context():
    model, recipe = _model_and_recipe()
    many = [1, 2, 3] + list(range(20, 200, 9))
    overflow = [{"step": s, "params": ["l1.weight"], "scale_after": 1024.0} for s in many]
    h = history(
        n=200, skipped=many, overflow=overflow, loss=[*np.linspace(2.0, 0.5, 150), *[math.nan] * 50]
    )
    findings = [{"reason": "loss", "step": 151, "mode": "stop", "replay": {"phase": "none"}}]
    by_hand = context(h, precision="fp16", thresholds=recipe.diagnostics.thresholds)
    by_hand.modules = module_infos(model, h.modules)
    by_hand.growth_interval = 50
    found = diagnose_run(h, findings, model, h.modules, recipe)
    by_hand.findings = findings
    assert found == diagnose(by_hand)
    assert [d["code"] for d in found] == ["nonfinite_loss", "frequent_overflow"]
    assert found[1]["evidence"]["growth_interval"] == 50


def test_diagnose_run_reads_the_history_as_the_report_holds_it(monkeypatch):
    """A long run is thinned in ``report.json``; the rules see the same points, so every
    step a diagnosis names is in the report's history. The loop's history is not changed."""
    model, recipe = _model_and_recipe()
    n = MAX_STEP_POINTS + 1000
    h = history(n=n, norms=[[1.0, 1.0, 1.0]] * n)
    seen: list[History] = []
    monkeypatch.setattr(engine, "diagnose", lambda c: seen.append(c.history) or [])
    diagnose_run(h, [], model, h.modules, recipe)
    (view,) = seen
    report = h.to_dict()
    assert len(view.steps) == MAX_STEP_POINTS and view.steps == report["step"]
    assert view.loss == report["loss"] and view.module_norms == report["module_grad_norms"]
    assert len(h.steps) == n  # the loop's own history is whole


def test_history_thinned_is_what_to_dict_holds():
    h = history(n=MAX_STEP_POINTS + 7, norms=[[1.0, 2.0, 3.0]] * (MAX_STEP_POINTS + 7))
    h.loss[-1] = math.nan  # stays a float, never the string "nan"
    thin, report = h.thinned(), h.to_dict()
    assert thin.steps == report["step"] and thin.module_norm_steps == report["module_norm_steps"]
    assert thin.steps[-1] == h.steps[-1] and math.isnan(thin.loss[-1])
    assert History.from_dict(report).to_dict() == report
