"""Top-k eigenpairs (largest algebraic) of a symmetric operator, with residuals.

Two paths, by whether the number of matvecs is bounded:

- unbounded (default): ``scipy.sparse.linalg.eigsh(which='LA', tol=tol)``, ARPACK's implicitly
  restarted Lanczos. Its first basis costs ``ncv = min(n, max(2k+1, 20))`` matvecs, each
  restart about ``ncv - k`` more; on the 2.9k-parameter test MLP λ1 converges to ~1e-15 in 21
  matvecs and the top 5 in ~50. A start vector ``v0`` does not shorten the first basis.
- ``max_matvecs=M``: exactly M matvecs: Lanczos with full reorthogonalisation (``lanczos.py``)
  for M − k steps, then the top k Ritz pairs. For sharpness tracking at a fixed cost (the
  docs' curvature study: m = 15 / 20 steps give λ1 to ~1e-6 / ~1e-10 on a tanh MLP).

Then one more matvec per pair gives its Rayleigh quotient vᵀAv (the reported eigenvalue: its
error is O(residual²·|λ|/gap)) and residual ‖Av−λv‖/|λ| (ARPACK's own estimate is not
exposed). A pair counts as converged when its residual is ≤ ``tol`` (ARPACK's criterion).
Cost: eigsh's matvecs (or M − k) + k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from gradoctor.hessian.lanczos import lanczos

EIGSH = "lanczos (scipy eigsh)"


@dataclass
class Eigenpairs:
    values: np.ndarray  # [k] descending (Rayleigh quotients)
    vectors: np.ndarray  # [n, k] unit columns
    residuals: np.ndarray  # [k] ‖Av−λv‖/|λ|
    method: str  # EIGSH, or "lanczos (full reorthogonalisation, m steps)"


def top_eigenpairs(
    op: LinearOperator,
    k: int,
    *,
    tol: float,
    rng: np.random.Generator,
    v0: np.ndarray | None = None,
    max_matvecs: int | None = None,
) -> Eigenpairs:
    """The k largest algebraic eigenpairs of symmetric ``op`` (k < n; with ``max_matvecs``,
    k < max_matvecs)."""
    n = op.shape[0]
    start = rng.standard_normal(n) if v0 is None else np.asarray(v0, dtype=np.float64)
    if max_matvecs is None:
        ncv = min(n, max(2 * k + 1, 20))
        try:
            _, vectors = eigsh(op, k=k, which="LA", tol=tol, v0=start, ncv=ncv)
        except ArpackNoConvergence as exc:  # after 10n restarts: keep what converged
            vectors = exc.eigenvectors
        method = EIGSH
    else:
        steps = min(n, max_matvecs - k)
        tri = lanczos(op, start, steps)
        _, u = tri.eigh()
        vectors = tri.basis.T @ u[:, ::-1][:, :k]  # top k Ritz vectors
        method = f"lanczos (full reorthogonalisation, {len(tri.alphas)} steps)"
    values, res = refine(op, np.asarray(vectors))
    order = np.argsort(values)[::-1]
    return Eigenpairs(values[order], vectors[:, order], res[order], method)


def refine(op: LinearOperator, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rayleigh quotients λ = vᵀAv and residuals ‖Av−λv‖/|λ| (|λ| floored at 1e-30), one
    matvec per column; ``vectors`` are normalised in place."""
    values, res = [], []
    for j in range(vectors.shape[1]):
        vectors[:, j] /= np.linalg.norm(vectors[:, j])
        vec = vectors[:, j]
        av = op.matvec(vec)
        lam = float(vec @ av)
        values.append(lam)
        res.append(min(float(np.linalg.norm(av - lam * vec) / max(abs(lam), 1e-30)), 1e300))
    return np.asarray(values), np.asarray(res)
