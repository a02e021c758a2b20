"""History keeps one row of module norms per log interval, exact running extremes, and thins
long runs for report.json."""

import math

import numpy as np

from gradoctor.training import history as history_module
from gradoctor.training.history import History


def test_rows_per_interval_and_exact_max_over_every_step():
    h = History(modules=["a", "b"])
    rows = np.array([[1.0, 2.0], [9.0, 2.5], [3.0, 3.0]])  # the max of a (9) is mid-interval
    h.steps += [1, 2, 3]
    h.add_module_norms([1, 2, 3], rows, applied=np.array([True, True, True]))
    skipped = np.array([[5.0, math.inf], [1.0, 1.0]])
    h.steps += [4, 5]
    h.skipped_steps.append(4)
    h.add_module_norms([4, 5], skipped, applied=np.array([False, True]))
    assert h.module_norm_steps == [3, 5] and h.module_norms == [[3.0, 3.0], [1.0, 1.0]]
    summary = h.grad_norm_summary()
    assert summary["a"]["max"] == 9.0  # seen at step 2, which was not a log step
    assert summary["b"]["max"] == 3.0  # the inf came from a skipped step
    assert summary["b"]["nonfinite_steps"] == 1 and summary["a"]["last"] == 1.0


def test_truncate_drops_later_rows():
    h = History(modules=["a"])
    for start in (1, 4, 7):
        steps = [start, start + 1, start + 2]
        h.steps += steps
        h.loss += [1.0, 1.0, 1.0]
        h.lr += [0.1] * 3
        h.loss_scale += [1.0] * 3
        h.grad_norm_total += [1.0] * 3
        h.add_module_norms(steps, np.full((3, 1), float(start)), np.ones(3, bool))
    h.truncate(5)
    assert h.steps == [1, 2, 3, 4, 5] and h.module_norm_steps == [3]
    assert h.module_max == [1.0]


def test_long_runs_are_thinned_evenly_keeping_the_ends(monkeypatch):
    monkeypatch.setattr(history_module, "MAX_STEP_POINTS", 100)
    monkeypatch.setattr(history_module, "MAX_MODULE_ROWS", 10)
    h = History(modules=["a"])
    n = 1000
    h.steps, h.loss = list(range(1, n + 1)), [float(i) for i in range(n)]
    h.lr, h.loss_scale, h.grad_norm_total = [0.1] * n, [1.0] * n, [1.0] * n
    for s in range(10, n + 1, 10):
        h.add_module_norms([s], np.array([[float(s)]]), np.ones(1, bool))
    d = h.to_dict()
    assert len(d["step"]) == 100 and d["step"][0] == 1 and d["step"][-1] == n
    assert d["loss"][-1] == float(n - 1)
    assert len(d["module_grad_norms"]) == 10 and d["module_norm_steps"][-1] == n
    assert d["module_grad_norms"][-1] == [float(n)]
