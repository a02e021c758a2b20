"""``edge_of_stability`` (gradoctor/diagnose/rules/edge_of_stability.py)."""

import numpy as np
import pytest

from gradoctor.diagnose.engine import diagnose
from gradoctor.diagnose.rules import edge_of_stability
from tests.diagnose.rules.synthetic import codes, context, history


def run(loss, sharpness, lr=0.3, threshold=None, every=10):
    """A run whose sharpness instrument measured ``sharpness[i]`` at step (i+1)·every."""
    h = history(n=len(loss), loss=loss)
    thr = threshold if threshold is not None else 2 / lr
    h.sharpness = [
        {
            "step": (i + 1) * every,
            "sharpness": s,
            "batch_sharpness": 0.9 * s,
            "threshold": thr,
            "lr": lr,
            "preconditioned": False,
        }
        for i, s in enumerate(sharpness)
    ]
    return context(h, "fp32", None, 2000, ())


def test_below_the_threshold_is_silent():
    assert codes(run(np.linspace(1, 0.1, 100), [3.0, 5.0, 6.0, 6.5])) == []


def test_crossing_while_the_loss_falls_is_info_with_the_stable_lr():
    loss = np.linspace(1.0, 0.1, 100) + 0.02 * np.sin(np.arange(100))
    (d,) = diagnose(run(loss, [3.0, 7.0, 6.8, 6.9]))
    assert d["code"] == "edge_of_stability" and d["severity"] == "info"
    assert d["steps"] == [20, 40] and d["evidence"]["first_step"] == 20
    assert d["evidence"]["ratio"] == pytest.approx(7.0 / (2 / 0.3))
    assert d["evidence"]["max_stable_lr"] == pytest.approx(0.3 * (2 / 0.3) / 6.9)  # = 2/λ
    assert "0.29" in d["fix"]


@pytest.mark.parametrize(
    "loss",
    [
        np.concatenate([np.linspace(1.0, 0.3, 30), np.linspace(0.3, 0.9, 70)]),  # rises
        np.concatenate([np.linspace(1.0, 0.2, 60), [0.9], np.linspace(0.2, 0.1, 39)]),  # spikes
    ],
    ids=["rising", "spiking"],
)
def test_staying_above_while_the_loss_rises_or_spikes_is_a_warning(loss):
    found = [
        d
        for d in diagnose(run(loss, [3.0, 4.0, 5.0, 6.0, 7.0, 7.5, 8.0, 9.0, 9.5, 10.0]))
        if d["code"] == "edge_of_stability"
    ]
    assert found and found[0]["severity"] == "warning"


def test_adam_uses_the_preconditioned_words_and_missing_thresholds_are_skipped():
    c = run(np.linspace(1, 0.1, 100), [400.0, 420.0], lr=0.1, threshold=380.0)
    for r in c.history.sharpness:
        r["preconditioned"] = True
    (d,) = edge_of_stability.check(c)
    assert "λmax(P⁻¹H)" in d.message
    c.history.sharpness = [
        {"step": 10, "sharpness": 5.0, "threshold": None, "lr": 0.1},
        {"step": 20, "error": "the loss is random"},
    ]
    assert edge_of_stability.check(c) == []
