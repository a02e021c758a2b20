"""``bad_initial_loss`` (rules/initial_loss.py) and ``exploding_activations``
(rules/activation_growth.py) on synthetic histories."""

import math

import numpy as np
import pytest

from gradoctor.diagnose.context import ModuleInfo
from gradoctor.diagnose.rules import activation_growth, initial_loss
from gradoctor.diagnose.rules.activation_growth import strongest_growth
from tests.diagnose.rules.synthetic import context, history


def with_initial(loss, chance=math.log(4), rule="uniform logits"):
    h = history()
    h.initial_loss = {
        "step": 1,
        "loss": loss,
        "chance": chance,
        "rule": rule,
        "loss_fn": "CrossEntropyLoss",
    }
    return context(h)


@pytest.mark.parametrize(
    ("loss", "fires"),
    [(1.6e4, True), (4 * math.log(4) + 1e-6, True), (3.9 * math.log(4), False), (1.4, False)],
)
def test_bad_initial_loss_fires_at_the_factor(loss, fires):
    found = initial_loss.check(with_initial(loss))
    assert bool(found) == fires
    if fires:
        (d,) = found
        assert d.evidence["chance"] == pytest.approx(math.log(4))
        assert d.evidence["ratio"] == pytest.approx(loss / math.log(4))
        assert "head" in d.fix and "prior" in d.fix


def test_bad_initial_loss_regression_fix_and_unmeasured_runs():
    (d,) = initial_loss.check(with_initial(50.0, chance=1.0, rule="the targets' mean"))
    assert "targets' mean" in d.fix
    assert initial_loss.check(context(history())) == []  # not measured (no loss: block)
    assert initial_loss.check(with_initial(math.nan)) == []


def growth_ctx(rms: list[float], names=None, norms=()):
    """Layers ``layer<i>`` with output RMS ``rms[i]``; those in ``norms`` are LayerNorms."""
    names = names or [f"layer{i}" for i in range(len(rms))]
    h = history()
    h.forward_order = list(names)
    h.act_rms = {n: [v] for n, v in zip(names, rms)}
    c = context(h)
    c.modules = {
        n: ModuleInfo(n, "LayerNorm" if i in norms else "Linear", 100, 1 if i in norms else 2)
        for i, n in enumerate(names)
    }
    return c


def test_geometric_growth_is_found_from_where_it_starts():
    rms = [1.0, 1.0, 1.1] + [1.1 * 2.5**k for k in range(1, 10)]
    (d,) = activation_growth.check(growth_ctx(rms))
    assert d.modules == ["layer2", "layer11"]
    assert d.evidence["per_layer_growth"] == pytest.approx(2.5)
    assert d.evidence["total_growth"] == pytest.approx(2.5**9)


def test_a_shrinking_layer_inside_the_stretch_does_not_hide_it():
    rms, v = [], 1.0
    for k in range(12):  # a residual-like pattern: x4, x0.8, x4, x0.8, ...
        rms.append(v)
        v *= 4.0 if k % 2 == 0 else 0.8
    (d,) = activation_growth.check(growth_ctx(rms))
    assert d.evidence["total_growth"] > 100


@pytest.mark.parametrize(
    "rms",
    [
        [1.0] * 12,  # Kaiming: flat
        [1.0, 1.2, 1.3, 1.5, 1.6, 1.7, 1.9, 2.0],  # slow (residual sqrt growth)
        [1.0, 3.0, 9.0, 1.0, 3.0, 9.0, 1.0, 3.0, 9.0],  # normalised every third layer
        [1.0, 10.0, 100.0],  # too few layers to call it geometric
    ],
    ids=["flat", "slow", "normalised", "short"],
)
def test_healthy_scales_stay_silent(rms):
    assert activation_growth.check(growth_ctx(rms)) == []


def test_growth_into_a_norm_layer_or_to_normal_scales_is_not_an_explosion():
    # a transformer block: a tiny attention projection, then LayerNorm back to ~1 (tiny_lm)
    rms = [0.9, 0.005, 0.02, 0.08, 0.3, 1.0, 0.9, 0.01, 0.05, 0.2, 1.0]
    assert activation_growth.check(growth_ctx(rms, norms=(5, 10))) == []
    assert (
        activation_growth.check(growth_ctx([0.001 * 3**k for k in range(8)])) == []
    )  # ends at 2.2
    # the same growth, but not through a norm layer and ending large, is found
    assert activation_growth.check(growth_ctx([0.01 * 3**k for k in range(10)]))


def test_strongest_growth_against_brute_force_truth():
    rng = np.random.default_rng(0)
    values = np.exp(np.cumsum(rng.normal(0.3, 0.5, 15)))
    i, j, total = strongest_growth(values, 1.5)
    assert total == pytest.approx(values[j] / values[i])
    steps = np.diff(np.log(values))
    assert steps[i] >= math.log(1.5) and steps[j - 1] >= math.log(1.5)  # trimmed ends grow
    best = max(
        values[b] / values[a]
        for a in range(len(values))
        for b in range(a + 3, len(values))
        if np.median(steps[a:b]) >= math.log(1.5)
    )
    assert total <= best * (1 + 1e-12)  # never more than the best qualifying stretch


def absurd_ctx(grad, weights, n=30):
    h = history(n=n, norms=[[grad / 3**0.5] * 3] * n)
    h.update_ratio_steps = [10, 20, 30]
    h.param_norm_total = [weights, weights, weights]
    return context(h)


@pytest.mark.parametrize(
    ("grad", "weights", "fires"),
    [(5e5, 100.0, True), (1e4, 100.0, True), (9.9e3, 100.0, False), (1.0, 30.0, False)],
)
def test_exploding_gradients_fires_on_an_absurd_norm_from_the_start(grad, weights, fires):
    from gradoctor.diagnose.rules import gradient_flow

    found = [
        d for d in gradient_flow.check(absurd_ctx(grad, weights)) if "from the start" in d.message
    ]
    assert bool(found) == fires
    if fires:
        assert found[0].evidence["ratio"] == pytest.approx(grad / weights)
        assert found[0].steps == [1, 10]


def test_param_norms_are_truncated_with_the_update_ratios():
    h = absurd_ctx(1.0, 1.0).history
    h.truncate(15)
    assert h.update_ratio_steps == [10] and h.param_norm_total == [1.0]
