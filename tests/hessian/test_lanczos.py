"""Lanczos with full reorthogonalisation."""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import aslinearoperator

from gradoctor.hessian.lanczos import lanczos


def test_basis_is_orthonormal_and_t_is_the_projection():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 300))
    a = a + a.T
    tri = lanczos(aslinearoperator(a), rng.standard_normal(300), 60)
    q = tri.basis
    assert np.abs(q @ q.T - np.eye(60)).max() <= 1e-12
    t = np.diag(tri.alphas) + np.diag(tri.betas, 1) + np.diag(tri.betas, -1)
    assert np.abs(q @ a @ q.T - t).max() <= 1e-10 * np.abs(a).max()


def test_stops_on_an_invariant_subspace():
    a = np.diag(np.repeat([1.0, 2.0], 50))
    tri = lanczos(aslinearoperator(a), np.ones(100), 30)
    assert len(tri.alphas) == 2 and np.allclose(tri.eigh()[0], [1.0, 2.0])
