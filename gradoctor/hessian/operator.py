"""The Hessian as a ``scipy.sparse.linalg.LinearOperator`` over float64 numpy vectors.

``HessianOperator(hvp)`` has shape ``(P, P)``; each matvec is one HVP (``hvp.count`` counts
them), run in the parameters' dtype on their device, with one host<->device copy of a
``[P]`` vector each way. Two variants share the class:

- ``preconditioner=d`` (``[P]``, positive): the operator is D^-1/2 H D^-1/2 with D = diag(d),
  symmetric, with the eigenvalues of D^-1 H (the preconditioned sharpness of Adam, see
  ``stability.py``);
- ``indices=idx`` (``[n]`` positions in the flat vector): the diagonal block H[idx, idx]
  (per-layer curvature); a block matvec still costs one full HVP.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from gradoctor.errors import UsageError
from gradoctor.hessian.hvp import HessianVectorProduct


class HessianOperator(LinearOperator):
    """H (or a preconditioned H, or one diagonal block of either) as a symmetric operator."""

    def __init__(
        self,
        hvp: HessianVectorProduct,
        *,
        preconditioner: torch.Tensor | None = None,
        indices: np.ndarray | None = None,
    ):
        self.hvp = hvp
        self.size = hvp.floss.layout.size
        self.indices = indices
        n = self.size if indices is None else len(indices)
        # D^-1/2 as a [P] float64 CPU tensor, or None (no preconditioner)
        self.scale = None if preconditioner is None else _inverse_sqrt(preconditioner, self.size)
        super().__init__(dtype=np.float64, shape=(n, n))

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        if self.indices is not None:
            full = np.zeros(self.size)
            full[self.indices] = x
            x = full
        v = torch.from_numpy(x)
        if self.scale is not None:
            v = v * self.scale
        hv = self.hvp(v)
        if self.scale is not None:
            hv = hv * self.scale.to(hv.device)
        out = hv.cpu().numpy()  # host sync: scipy works on host vectors
        return out if self.indices is None else out[self.indices]

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._matvec(x)  # symmetric

    def _adjoint(self) -> HessianOperator:
        return self


def _inverse_sqrt(d: torch.Tensor, size: int) -> torch.Tensor:
    """d^-1/2 as a ``[P]`` float64 CPU tensor, after checking d is a positive ``[P]`` vector."""
    d = torch.as_tensor(d).detach().reshape(-1).to("cpu", torch.float64)
    if d.numel() != size:
        raise UsageError(
            f"the preconditioner has {d.numel()} entries but the model has {size} trainable "
            "parameters",
            hint="build it with adam_preconditioner(optimizer, model) for the same model",
        )
    if not bool(torch.isfinite(d).all()) or not bool((d > 0).all()):
        raise UsageError(
            "the preconditioner must be finite and positive everywhere",
            hint="a diagonal preconditioner d gives the operator D^-1/2 H D^-1/2; "
            "adam_preconditioner adds eps, so its entries are positive",
        )
    return d.rsqrt()
