"""Lanczos tridiagonalisation with full reorthogonalisation (the shared core of the fixed-budget
eigenvalue path in ``eigen.py`` and of ``density.py``).

m steps from v build an orthonormal basis Q ([m, n]) of the Krylov space and the tridiagonal
T = Q A Qᵀ (``alphas`` on the diagonal, ``betas`` beside it). Every new vector is
reorthogonalised against all earlier ones (classical Gram-Schmidt, twice), so no ghost copies
of converged eigenvalues appear, at O(m²n) flops. Cost: m matvecs (fewer when the Krylov space
becomes invariant) and m·n float64 of host memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import LinearOperator


@dataclass
class Tridiagonal:
    alphas: np.ndarray  # [m] diagonal of T
    betas: np.ndarray  # [m-1] off-diagonal of T
    basis: np.ndarray  # [m, n] orthonormal rows

    def eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and T's eigenvectors ([m, m], columns)."""
        m = len(self.alphas)
        t = (
            np.diag(self.alphas)
            + np.diag(self.betas[: m - 1], 1)
            + np.diag(self.betas[: m - 1], -1)
        )
        return np.linalg.eigh(t)


def lanczos(op: LinearOperator, v: np.ndarray, steps: int) -> Tridiagonal:
    """``steps`` (≤ n) Lanczos steps of symmetric ``op`` from v; stops early when the Krylov
    space is invariant (β below 1e-10 of the largest coefficient seen)."""
    basis = np.zeros((steps, v.size))
    alphas: list[float] = []
    betas: list[float] = []
    q = v / np.linalg.norm(v)
    for j in range(steps):
        basis[j] = q
        w = op.matvec(q)
        alphas.append(float(q @ w))
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(np.linalg.norm(w))
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0), 1e-300)
        if j == steps - 1 or beta <= 1e-10 * scale:
            break
        betas.append(beta)
        q = w / beta
    m = len(alphas)
    return Tridiagonal(np.asarray(alphas), np.asarray(betas), basis[:m])
