"""Two check-grads cases with 1e6 input elements each (README: check-grads cost and limits)."""

import torch


class Softplus1M(torch.autograd.Function):
    """Elementwise, 1000 x 1000 = 1e6 input elements."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nn.functional.softplus(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)

    @staticmethod
    def example_inputs():
        return (torch.randn(1000, 1000, requires_grad=True),)


class Mix(torch.nn.Module):
    """A per-sample linear map over 4000 x 250 = 1e6 inputs, with a 250x250 weight."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(250, 250)

    def forward(self, x):
        return torch.tanh(self.lin(x))

    @staticmethod
    def example_inputs():
        return (torch.randn(4000, 250),)
