"""Per-layer curvature: the top eigenvalue and trace of each module's diagonal block of H.

A module's block is H restricted to the parameters it owns directly (its own ``weight``,
``bias``, ..., not its children's), ``HessianOperator(indices=...)``. Each block matvec costs
one full HVP, so per block:

- n ≤ ``budget``: the dense block from n matvecs, then exact ``eigvalsh`` and trace;
- else ``eigsh`` (k=1, ~20-40 matvecs) for the eigenvalue and Hutch++ with ``budget`` matvecs
  for the trace.

Total ≈ Σ_blocks min(n, budget + ~30) HVPs.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator

from gradoctor.hessian.eigen import top_eigenpairs
from gradoctor.hessian.functional import ParamLayout
from gradoctor.hessian.result import LayerCurvature
from gradoctor.hessian.trace import estimate_trace


def block_indices(layout: ParamLayout) -> dict[str, np.ndarray]:
    """``{module name: [n] positions in the flat vector}`` for each module owning trainable
    parameters directly, in ``named_parameters()`` order."""
    blocks = {}
    for module, params in layout.module_blocks().items():
        spans = [
            np.arange(layout.offsets[i], layout.offsets[i] + layout.shapes[i].numel())
            for i in params
        ]
        blocks[module] = np.concatenate(spans)
    return blocks


def layer_curvature(
    op: LinearOperator, *, budget: int, tol: float, rng: np.random.Generator
) -> LayerCurvature:
    """Top eigenvalue and trace of one block operator ``op`` (n x n)."""
    n = op.shape[0]
    if n <= budget:
        block = dense(op)
        return LayerCurvature(float(np.linalg.eigvalsh(block)[-1]), float(np.trace(block)), n)
    pairs = top_eigenpairs(op, 1, tol=tol, rng=rng)
    trace = estimate_trace(op, budget, rng)
    top = float(pairs.values[0]) if len(pairs.values) else float("nan")
    return LayerCurvature(top, trace.estimate, n, trace_stderr=trace.stderr)


def dense(op: LinearOperator) -> np.ndarray:
    """The n x n matrix of ``op`` (n matvecs), symmetrised (rounding makes it slightly not)."""
    a = op.matmat(np.eye(op.shape[0]))
    return 0.5 * (a + a.T)
