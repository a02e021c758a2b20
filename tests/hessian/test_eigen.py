"""Top eigenpairs of explicit symmetric matrices (the operator is tested in test_api.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from gradoctor.hessian.eigen import top_eigenpairs


def counted(a: np.ndarray) -> tuple[LinearOperator, list[int]]:
    calls = [0]

    def matvec(x):
        calls[0] += 1
        return a @ x

    return LinearOperator(a.shape, matvec=matvec, dtype=np.float64), calls


def spectrum_matrix(eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return q @ np.diag(eigenvalues) @ q.T


def test_largest_algebraic_not_largest_magnitude():
    a = spectrum_matrix(np.concatenate([[-10.0, -9.0], np.linspace(0, 3, 98)]))
    pairs = top_eigenpairs(aslinearoperator(a), 2, tol=1e-10, rng=np.random.default_rng(0))
    assert pairs.values == pytest.approx([3.0, 3 - 3 / 97], rel=1e-10)
    assert (pairs.residuals <= 1e-8).all()
    assert pairs.method == "lanczos (scipy eigsh)"


def test_residuals_cost_one_matvec_per_pair_and_are_true_residuals():
    a = spectrum_matrix(np.linspace(-1, 5, 200))
    op, calls = counted(a)
    pairs = top_eigenpairs(op, 3, tol=1e-3, rng=np.random.default_rng(0))
    for lam, vec, res in zip(pairs.values, pairs.vectors.T, pairs.residuals):
        assert np.linalg.norm(a @ vec - lam * vec) / abs(lam) == pytest.approx(res, rel=1e-6)
        assert lam == pytest.approx(vec @ a @ vec, rel=1e-12)  # the Rayleigh quotient
    assert calls[0] > 3


def test_fixed_budget_lanczos_uses_exactly_max_matvecs():
    a = spectrum_matrix(np.concatenate([np.linspace(0, 1, 297), [2.0, 3.0, 4.0]]))
    op, calls = counted(a)
    pairs = top_eigenpairs(op, 2, tol=1e-6, rng=np.random.default_rng(0), max_matvecs=25)
    assert calls[0] == 25
    assert pairs.method == "lanczos (full reorthogonalisation, 23 steps)"
    assert pairs.values == pytest.approx([4.0, 3.0], rel=1e-8)
