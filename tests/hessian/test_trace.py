"""Hutch++ against exact traces: accuracy at 100 HVPs and coverage of its 95% interval.

What is tested: the trained MLP's Hessian (conftest.py) is nearly PSD (trace 0.454 against
Σ|λ| 0.637); that is where the 2% target at 100 HVPs is met (measured: max error 1.5% over 100
seeds). On an indefinite Hessian, Hutch++ stays unbiased and its interval still covers (the
CNN's below, trace −7.4 against Σ|λ| ≫ 7), but 2% at 100 HVPs is out of reach: the MLP at
initialisation (trace 5.1, Σ|λ| 59) measured 7.5% median, 27% max error.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.linalg import aslinearoperator

from gradoctor.hessian import hessian_spectrum
from gradoctor.hessian.trace import estimate_trace, exact_trace


def coverage(hessian: np.ndarray, seeds: range, budget: int = 100) -> tuple[int, float]:
    """(number of seeds whose estimate ± 1.96·stderr holds the trace, worst relative error)."""
    op, truth = aslinearoperator(hessian), float(np.trace(hessian))
    covered, worst = 0, 0.0
    for seed in seeds:
        est = estimate_trace(op, budget, np.random.default_rng(seed))
        assert est.method == "hutch++" and est.samples == budget - 2 * (budget // 3)
        covered += abs(est.estimate - truth) <= 1.96 * est.stderr
        worst = max(worst, abs(est.estimate - truth) / abs(truth))
    return covered, worst


def test_trace_within_2_percent_at_100_hvps_end_to_end(mlp_problem, mlp_hessian):
    p = mlp_problem
    truth = float(mlp_hessian.trace())
    for seed in range(3):
        result = hessian_spectrum(p.model, p.loss_fn, p.batches, trace=True, seed=seed)
        assert abs(result.trace.estimate - truth) <= 0.02 * abs(truth)
        assert result.trace.hvps == 100
        assert result.hvps == 100 + 22  # the eigenvalue stage as in test_api


def test_the_95_percent_interval_covers_in_90_of_100_seeds_on_the_cnn(cnn_hessian):
    """An indefinite Hessian (the BatchNorm CNN's, P = 723): ~0.5 s."""
    covered, _ = coverage(cnn_hessian.numpy(), range(100))
    assert covered >= 90  # measured 96 (952 of 1000)


def test_the_interval_covers_in_18_of_20_seeds_on_the_mlp(mlp_hessian):
    covered, worst = coverage(mlp_hessian.numpy(), range(20))
    assert covered >= 18  # measured 20
    assert worst <= 0.02


@pytest.mark.slow
def test_the_95_percent_interval_covers_in_90_of_100_seeds_on_the_mlp(mlp_hessian):
    """~8 s: 100 x 100 matvecs with the dense [2883, 2883] matrix."""
    covered, worst = coverage(mlp_hessian.numpy(), range(100))
    assert covered >= 90  # measured 92
    assert worst <= 0.02  # measured 1.5%


@pytest.mark.slow
def test_coverage_over_1000_seeds_is_near_95_percent(mlp_hessian):
    """~80 s. Normal approximation with 34 samples: the nominal 95% is ~94% (t quantile)."""
    covered, _ = coverage(mlp_hessian.numpy(), range(1000))
    assert 910 <= covered <= 975  # measured 938; the worst error 2.6%


def test_budget_at_least_n_gives_the_exact_trace():
    a = np.random.default_rng(0).standard_normal((7, 7))
    a = a + a.T
    est = estimate_trace(aslinearoperator(a), 7, np.random.default_rng(0))
    assert est.method == "exact" and est.stderr == 0.0 and est.samples == 7
    assert est.estimate == pytest.approx(np.trace(a), abs=1e-12)
    assert exact_trace(aslinearoperator(a)).hvps == 7


def test_a_low_rank_matrix_is_captured_by_the_sketch():
    """Rank 5 < budget/3: Q spans the range, the complement is zero: exact up to rounding."""
    rng = np.random.default_rng(1)
    u = rng.standard_normal((400, 5))
    a = u @ np.diag([5.0, 4, 3, -2, 1]) @ u.T
    est = estimate_trace(aslinearoperator(a), 30, rng)
    assert est.estimate == pytest.approx(np.trace(a), rel=1e-10)
    assert est.stderr <= 1e-8
