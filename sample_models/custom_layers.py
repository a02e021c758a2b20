"""Custom layers to try `gradoctor check-grads` on: one correct, two with classic bugs.

    gradoctor check-grads sample_models/custom_layers.py

Each class with an ``example_inputs()`` staticmethod is a case (see the README).
"""

import torch


class StableSoftplus(torch.autograd.Function):
    """softplus with the stable branch ``x`` for x > 20; d/dx = sigmoid(x). Correct."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x > 20, x, torch.log1p(torch.exp(x.clamp(max=20))))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)

    @staticmethod
    def example_inputs():
        return (torch.randn(4, 7),)


class SoftplusBadBranch(torch.autograd.Function):
    """The same softplus, but the large-x branch's gradient is 0 instead of 1: invisible at
    the example's scale (randn never exceeds 20), found by the input-range check."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x > 20, x, torch.log1p(torch.exp(x.clamp(max=20))))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.where(x > 20, torch.zeros_like(x), torch.sigmoid(x))

    @staticmethod
    def example_inputs():
        return (torch.randn(4, 6),)


class DetachedCube(torch.autograd.Function):
    """x**3 with backward ``3 * x.detach()**2``: right once, wrong in double backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x.detach() ** 2

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)
