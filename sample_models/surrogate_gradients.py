"""Straight-through estimators (STEs): backwards that are on purpose not the forward's derivative.

    gradoctor check-grads sample_models/surrogate_gradients.py

``round`` and ``sign`` are piecewise constant: their derivative is 0 almost everywhere, so
quantisation-aware training passes the gradient "straight through" instead. Each case names
the function whose derivative its backward should equal (``gradoctor_case = {"surrogate":
fn}``), and finite differences are taken of that. Three declared cases (two correct, one
with a planted bug) and one undeclared STE, which fails with a hint to declare it.
"""

import torch
import torch.nn.functional as F


def identity(x):
    """The classic STE's surrogate: d/dx = 1."""
    return x


class RoundClippedSTE(torch.autograd.Function):
    """round(x) forward; backward ``g * 1[|x| <= 1]``, the derivative of hardtanh. Correct."""

    gradoctor_case = {"surrogate": F.hardtanh}

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)

    @staticmethod
    def example_inputs():
        return (1.5 * torch.randn(4, 5),)  # about half the entries outside [-1, 1]


class SignSTE(torch.autograd.Function):
    """sign(x) forward; backward ``g`` (the identity STE of binarised networks). Correct."""

    gradoctor_case = {"surrogate": identity}

    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        return grad

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 6),)


class RoundClippedSTEDoubled(torch.autograd.Function):
    """The clipped STE with its backward scaled by 2 (planted bug): inside [-1, 1] the
    analytic gradient is 2 where hardtanh's derivative is 1."""

    gradoctor_case = {"surrogate": F.hardtanh}

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * grad * (x.abs() <= 1).to(grad.dtype)

    @staticmethod
    def example_inputs():
        return (1.5 * torch.randn(4, 5),)


class RoundSTEUndeclared(torch.autograd.Function):
    """The classic STE of round with no surrogate declared: the forward's finite differences
    are 0, the backward's gradient 1, so it fails -- with a hint to declare
    ``surrogate=identity``."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad

    @staticmethod
    def example_inputs():
        return (torch.randn(4, 5),)
