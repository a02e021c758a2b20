"""Each rule on synthetic histories: fires on the pathology, silent on the normal pattern."""

import math

import numpy as np
import pytest

from gradoctor.diagnose.context import ModuleInfo, RunContext
from gradoctor.diagnose.engine import diagnose
from gradoctor.recipe.schema import Thresholds

MODULES = ["l0", "l1", "l2"]


def ctx(
    n=100,
    loss=None,
    norms=None,
    precision="fp32",
    skipped=(),
    scales=None,
    overflow=(),
    update=None,
    dead=None,
    absmax=None,
    thresholds=None,
    growth_interval=2000,
    findings=(),
):
    steps = list(range(1, n + 1))
    loss = loss if loss is not None else list(np.linspace(2.0, 0.5, n))
    norms = norms if norms is not None else [[1.0, 1.0, 1.0]] * n
    history = {
        "step": steps,
        "loss": loss,
        "lr": [1e-3] * n,
        "module_names": MODULES,
        "module_grad_norms": norms,
        "grad_norm_total": [float(np.sqrt(np.sum(np.square(r)))) for r in norms],
        "loss_scale": scales or [65536.0] * n,
        "skipped_steps": list(skipped),
        "overflow": list(overflow),
        "update_ratio": update or {m: [1e-3] * 10 for m in MODULES},
        "update_ratio_steps": steps[9::10],
        "dead_fraction": dead or {},
        "relu_units": {k: 64 for k in (dead or {})},
        "act_absmax": absmax or {},
        "activation_steps": [50, 100],
        "forward_order": MODULES,
        "grad_absmax": [],
    }
    infos = {m: ModuleInfo(m, "Linear", 100, 2) for m in MODULES}
    return RunContext(
        history, list(findings), infos, precision, thresholds or Thresholds(), growth_interval, 0.5
    )


def codes(c):
    return [d["code"] for d in diagnose(c)]


def test_healthy_history_is_silent():
    assert codes(ctx()) == []


def test_exploding_over_time_and_with_depth():
    growing = [[10 ** (i / 25)] * 3 for i in range(100)]  # 1 -> ~1e4
    d = diagnose(ctx(norms=growing))
    assert [x["code"] for x in d] == ["exploding_gradients"] and d[0]["evidence"]["growth"] > 100
    deep = [[1e4, 10.0, 1.0]] * 100  # the input side gets 1e4x the output side
    (e,) = diagnose(ctx(norms=deep))
    assert e["code"] == "exploding_gradients" and e["modules"][0] == "l0"


def test_vanishing_needs_to_be_sustained():
    vanished = [[1e-6, 1e-2, 1.0]] * 100
    (v,) = diagnose(ctx(norms=vanished))
    assert v["code"] == "vanishing_gradients" and v["modules"][0] == "l0"
    transient = [[1e-6, 1e-2, 1.0]] * 10 + [[1.0, 1.0, 1.0]] * 90  # only at the start
    assert codes(ctx(norms=transient)) == []


def test_fp16_normal_rhythm_is_silent_but_frequent_overflow_is_not():
    # calibration (3 skips at the start) + one growth probe per growth_interval: normal
    skipped = [1, 2, 3, 53, 103, 153]
    assert codes(ctx(n=200, precision="fp16", skipped=skipped, growth_interval=50)) == []
    many = [1, 2, 3] + list(range(20, 200, 9))
    overflow = [{"step": s, "params": ["l1.weight"], "scale_after": 1024.0} for s in many]
    d = diagnose(ctx(n=200, precision="fp16", skipped=many, overflow=overflow))
    assert d[0]["code"] == "frequent_overflow" and d[0]["modules"] == ["l1"]


def test_loss_scale_collapse():
    scales = [65536.0 / 2**i for i in range(40)] + [1e-12] * 60
    d = diagnose(ctx(precision="fp16", skipped=range(1, 101), scales=scales))
    assert "loss_scale_collapse" in [x["code"] for x in d] and d[0]["severity"] == "error"


def test_update_ratio_bands_and_configurable_thresholds():
    update = {"l0": [0.5] * 10, "l1": [1e-3] * 10, "l2": [1e-9] * 10}
    d = {x["code"]: x for x in diagnose(ctx(update=update))}
    assert d["update_ratio_high"]["modules"] == ["l0"] and d["update_ratio_low"]["modules"] == [
        "l2"
    ]
    loose = Thresholds(update_ratio_high=1.0, update_ratio_low=1e-12)
    assert codes(ctx(update=update, thresholds=loose)) == []


def test_divergence_and_rising():
    up = list(np.linspace(1.0, 5.0, 100))
    assert codes(ctx(loss=up)) == ["loss_divergence"]
    v_shape = list(np.linspace(2.0, 0.2, 50)) + list(np.linspace(0.2, 1.8, 50))
    (d,) = diagnose(ctx(loss=v_shape))
    assert d["code"] == "loss_divergence" and d["severity"] == "warning"
    noisy = list(1.0 / np.arange(1, 101) + 0.05 * np.sin(np.arange(100)))
    assert codes(ctx(loss=noisy)) == []


def test_dead_units_and_threshold():
    dead = {"relu": [0.95, 0.97], "relu2": [0.1, 0.1]}
    (d,) = diagnose(ctx(dead=dead))
    assert d["code"] == "dead_units" and d["modules"] == ["relu"] and d["severity"] == "error"
    assert codes(ctx(dead=dead, thresholds=Thresholds(dead_fraction=0.99))) == []


def test_headroom_warning_in_fp16_info_otherwise():
    absmax = {"l1": [30000.0], "l0": [10.0]}
    (w,) = diagnose(ctx(precision="fp16", absmax=absmax))
    assert w["code"] == "fp16_headroom" and w["severity"] == "warning" and w["modules"] == ["l1"]
    (i,) = diagnose(ctx(precision="bf16", absmax=absmax))
    assert i["severity"] == "info"


def test_nonfinite_loss_first_step():
    loss = [1.0] * 40 + [math.nan] * 60
    (d,) = diagnose(ctx(loss=loss))
    assert (
        d["code"] == "nonfinite_loss"
        and d["steps"] == [41]
        and d["evidence"]["last_finite_step"] == 40
    )


def test_a_broken_rule_does_not_lose_the_report(monkeypatch):
    from gradoctor.diagnose.rules import dead_units

    monkeypatch.setattr(dead_units, "check", lambda c: 1 / 0)
    d = diagnose(ctx())
    assert d[0]["code"] == "internal" and d[0]["severity"] == "info"


@pytest.mark.parametrize("bad", [{"dead_fraction": -1}, {"nope": 1}])
def test_thresholds_are_validated(bad, tmp_path):
    import gradoctor
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
