"""Implicit (DEQ-style) layers: a forward that iterates to a fixed point, an implicit backward.

    gradoctor check-grads sample_models/fixed_point_layers.py

The forward iterates ``z = tanh(z W^T + x)`` from ``z = 0`` until no entry moves by more
than ``TOL`` (absolute), so its outputs are only accurate to about ``TOL``, and the
derivative of what it computes (the k-th iterate) differs from the exact fixed point's by
about ``TOL / |z|`` relative: about 1e-4 when the inputs are scaled x1e-3, enough for a
false alarm on the correct layer there. The implicit backward is the derivative of the *exact*
fixed point, so the layers declare it as their surrogate (``gradoctor_case = {"surrogate":
converged}``, a solve to 1e-14): finite differences are taken of that. The backward solves the implicit-function-theorem system at the fixed point
``z*``: with ``s = 1 - z*^2`` (the tanh derivative) and ``A = diag(s) W`` (d f / d z),
``u = (I - A)^-T g`` per sample, then ``grad_x = s u`` and ``grad_W = (s u)^T z*``.
One correct layer, one with the classic bug: the backward of only the last iteration
(``u = g``, as if ``z*`` did not depend on itself).
"""

import torch

TOL = 1e-7  # absolute convergence tolerance of the forward
MAX_ITERS = 500


def fixed_point(x, w, tol=TOL):
    """z* = tanh(z* W^T + x) by plain iteration (W's spectral norm < 1: a contraction).
    x: (B, D), w: (D, D) -> (B, D). Cost: one (B, D) x (D, D) matmul per iteration."""
    z = torch.zeros_like(x)
    for _ in range(MAX_ITERS):
        nxt = torch.tanh(z @ w.T + x)
        if float((nxt - z).abs().max()) < tol:
            return nxt
        z = nxt
    raise RuntimeError(f"fixed point not reached in {MAX_ITERS} iterations")


def contraction(d=6, norm=0.5):
    """A (d, d) weight with spectral norm ``norm``."""
    w = torch.randn(d, d)
    return norm * w / torch.linalg.matrix_norm(w, ord=2)


class _ImplicitFixedPoint(torch.autograd.Function):
    """The fixed point of ``z = tanh(z W^T + x)`` with the implicit backward. Correct."""

    @staticmethod
    def forward(ctx, x, w):
        z = fixed_point(x, w)
        ctx.save_for_backward(z, w)
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        z, w = ctx.saved_tensors
        s = 1 - z**2  # (B, D)
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        a = s.unsqueeze(-1) * w  # (B, D, D): d f / d z per sample
        u = torch.linalg.solve((eye - a).transpose(-1, -2), grad.unsqueeze(-1)).squeeze(-1)
        su = s * u
        return su, su.T @ z


class _LastIterationFixedPoint(_ImplicitFixedPoint):
    """The same fixed point (forward inherited), but the backward of only the last iteration
    (``u = g``): it drops the ``(I - A)^-T`` of the implicit function theorem. Wrong."""

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        z, _ = ctx.saved_tensors
        sg = (1 - z**2) * grad
        return sg, sg.T @ z


def converged(module, x):
    """The fixed point solved to 1e-14: what the implicit backward differentiates."""
    return fixed_point(x, module.weight, tol=1e-14)


class ImplicitTanhDEQ(torch.nn.Module):
    """A DEQ layer: ``z* = tanh(z* W^T + x)``, weight (6, 6) with spectral norm 0.5.
    x: (B, 6) -> z*: (B, 6). Correct implicit backward."""

    function = _ImplicitFixedPoint
    gradoctor_case = {"surrogate": converged}

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(contraction())

    def forward(self, x):
        return self.function.apply(x, self.weight)

    @staticmethod
    def example_inputs():
        return (torch.randn(4, 6),)


class LastIterationDEQ(ImplicitTanhDEQ):
    """The same layer with the backward of only the last iteration. Wrong."""

    function = _LastIterationFixedPoint
