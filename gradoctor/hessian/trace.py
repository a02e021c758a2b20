"""Trace of a symmetric operator: Hutch++ (Meyer, Musco, Musco & Woodruff 2020, Alg. 1) with a
standard error, or exactly for small operators.

With a budget of m matvecs on an n x n operator A:

- m >= n: exact, tr A = Σ e_iᵀ A e_i (n matvecs, stderr 0);
- else Hutch++: k = m // 3 matvecs sketch the range, Q = orth(A S) for Rademacher S [n, k];
  k more give tr(Qᵀ A Q) exactly; the remaining s = m - 2k go to Hutchinson on the complement,
  z_i = gᵢᵀ (I−QQᵀ) A (I−QQᵀ) gᵢ with Rademacher gᵢ. The estimate tr(QᵀAQ) + mean(z) is
  unbiased for any symmetric A (PSD or not); for PSD A it needs O(1/ε) matvecs for relative
  error ε against Hutchinson's O(1/ε²).

The standard error is std(z)/√s: given Q the first term is exact and the z_i are i.i.d., so
estimate ± 1.96·stderr is a 95% interval (up to the normal approximation with s samples;
tests/hessian/test_trace.py measures its coverage).

Written here rather than taken from curvlinops: its ``hutchpp_trace`` returns the estimate
only (no standard error or sample count), and recent versions take only its own
``PyTorchLinearOperator``, while this module works on any scipy ``LinearOperator``.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator

from gradoctor.hessian.result import TraceEstimate

HUTCHPP = "hutch++"
EXACT = "exact"
MIN_BUDGET = 6  # two sketch, two projected, two Hutchinson matvecs: the least with a stderr


def estimate_trace(op: LinearOperator, budget: int, rng: np.random.Generator) -> TraceEstimate:
    """Hutch++ within ``budget`` matvecs (``budget >= MIN_BUDGET``), or exact when
    ``budget >= n``."""
    n = op.shape[0]
    if budget >= n:
        return exact_trace(op)
    k = budget // 3
    sketch = op.matmat(_rademacher(rng, n, k))
    q, _ = np.linalg.qr(sketch)  # [n, k]
    low_rank = float(np.sum(q * op.matmat(q)))
    s = budget - 2 * k
    g = _rademacher(rng, n, s)
    g -= q @ (q.T @ g)
    z = np.sum(g * op.matmat(g), axis=0)  # [s] Hutchinson samples on the complement
    return TraceEstimate(
        estimate=low_rank + float(z.mean()),
        stderr=float(z.std(ddof=1) / np.sqrt(s)),
        samples=s,
        method=HUTCHPP,
        hvps=budget,
    )


def exact_trace(op: LinearOperator) -> TraceEstimate:
    """Σ e_iᵀ A e_i: n matvecs."""
    n = op.shape[0]
    diag = [op.matvec(e)[i] for i, e in enumerate(np.eye(n))]
    return TraceEstimate(float(np.sum(diag)), 0.0, n, EXACT, hvps=n)


def _rademacher(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), size=(n, count))
