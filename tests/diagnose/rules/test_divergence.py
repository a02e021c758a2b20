"""``loss_divergence`` (gradoctor/diagnose/rules/divergence.py)."""

import math

import numpy as np

from gradoctor.diagnose.engine import diagnose
from tests.diagnose.rules.synthetic import codes, ctx


def test_divergence_and_rising():
    up = list(np.linspace(1.0, 5.0, 100))
    assert codes(ctx(loss=up)) == ["loss_divergence"]
    v_shape = list(np.linspace(2.0, 0.2, 50)) + list(np.linspace(0.2, 1.8, 50))
    (d,) = diagnose(ctx(loss=v_shape))
    assert d["code"] == "loss_divergence" and d["severity"] == "warning"
    noisy = list(1.0 / np.arange(1, 101) + 0.05 * np.sin(np.arange(100)))
    assert codes(ctx(loss=noisy)) == []


def test_non_finite_losses_are_left_out_of_the_trend():
    loss = list(np.linspace(1.0, 5.0, 100))
    loss[30], loss[60] = math.inf, -math.inf
    d = [x for x in diagnose(ctx(loss=loss)) if x["code"] == "loss_divergence"]
    assert d and math.isfinite(d[0]["evidence"]["last"])
