"""Spectral density by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani et al.
2019), Gaussian-broadened onto a grid.

For each of ``probes`` Rademacher vectors v, m = ``steps`` Lanczos steps with full
reorthogonalisation (``lanczos.py``) from q1 = v/‖v‖ give a tridiagonal T = U diag(θ) Uᵀ; the Ritz values θ_j
with weights U[0, j]² are a Gauss quadrature of q1's spectral measure, whose mean over probes
estimates the eigenvalue density (1/n) Σ δ(x − λ_i). Each node is then replaced by a Gaussian
of width ``sigma`` (default 1% of the spread of the nodes) on a ``grid_points`` grid that
extends 5σ past the extreme nodes, so the density integrates to 1 up to quadrature error.

Its first moment is exactly mean(q1ᵀ A q1) = Hutchinson's trace/n; its extremes converge to
λmin and λmax. Cost: steps·probes matvecs, and steps·n float64 of host memory (the basis
kept for reorthogonalisation, one probe at a time).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator

from gradoctor.hessian.lanczos import lanczos
from gradoctor.hessian.result import Density


def slq_density(
    op: LinearOperator,
    *,
    steps: int,
    probes: int,
    rng: np.random.Generator,
    grid_points: int = 1000,
    sigma: float | None = None,
) -> Density:
    """The broadened spectral density of symmetric ``op`` (``steps`` capped at n)."""
    n = op.shape[0]
    steps = min(steps, n)
    nodes, weights = [], []
    for _ in range(probes):
        theta, w = _lanczos_quadrature(op, rng.choice([-1.0, 1.0], size=n), steps)
        nodes.append(theta)
        weights.append(w / probes)
    nodes_all, weights_all = np.concatenate(nodes), np.concatenate(weights)
    lo, hi = float(nodes_all.min()), float(nodes_all.max())
    spread = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = 0.01 * spread if sigma is None else sigma
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_points)
    values = _broaden(grid, nodes_all, weights_all, sigma)
    return Density(grid, values, steps, probes, sigma, nodes_all, weights_all)


def _lanczos_quadrature(
    op: LinearOperator, v: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and their Gauss weights U[0, j]² after ``steps`` Lanczos steps from v."""
    theta, u = lanczos(op, v, steps).eigh()
    return theta, u[0] ** 2


def _broaden(grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Σ_j w_j N(x; θ_j, σ²) at each grid point x, in chunks of nodes to bound memory."""
    out = np.zeros_like(grid)
    norm = 1.0 / (sigma * np.sqrt(2 * np.pi))
    for start in range(0, len(nodes), 256):
        t, w = nodes[start : start + 256], weights[start : start + 256]
        out += (w * np.exp(-0.5 * ((grid[:, None] - t) / sigma) ** 2)).sum(axis=1) * norm
    return out
