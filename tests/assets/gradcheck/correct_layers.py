"""Correct layers that trip naive gradient checkers; `gradoctor check-grads` must pass all.

gradoctor check-grads tests/assets/gradcheck/correct_layers.py
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

import gradoctor


class ReLUAtZero(torch.autograd.Function):
    """relu(x) with exact zeros in the input (kinks); d/dx = 1[x > 0]."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0).to(grad.dtype)

    @staticmethod
    def example_inputs():
        x = torch.randn(4, 6)
        x[:, ::2] = 0.0  # half the entries sit exactly on the kink
        return (x,)


class MaxWithTies(nn.Module):
    """Row-wise max where every row has a tie for the maximum."""

    def forward(self, x):
        return x.amax(dim=1)

    @staticmethod
    def example_inputs():
        x = torch.randn(3, 5)
        x[:, 1] = x.max(dim=1).values
        return (x,)


class MaskedDropout(torch.autograd.Function):
    """Inverted dropout that saves its mask for backward (random, correct)."""

    @staticmethod
    def forward(ctx, x, p: float):
        mask = (torch.rand_like(x) > p).to(x.dtype) / (1 - p)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None

    @staticmethod
    def example_inputs():
        return (torch.randn(4, 8), 0.3)


class DropoutMLP(nn.Module):
    """Linear -> tanh -> nn.Dropout (train mode) -> Linear."""

    def __init__(self):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(5, 6), nn.Dropout(0.25), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.fc1(x))))

    @staticmethod
    def example_inputs():
        return (torch.randn(4, 5),)


class StableSoftplus(torch.autograd.Function):
    """softplus with the stable branch x for x > 20 (d/dx = sigmoid(x), ~1 there)."""

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


class BatchNormTrain(nn.Module):
    """BatchNorm1d in train mode: mixes samples by design (batch independence skipped)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(x)

    @staticmethod
    def example_inputs():
        return (torch.randn(6, 4),)


class CubeOnce(torch.autograd.Function):
    """x**3 with a once_differentiable backward (double backward is skipped)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x**2

    @staticmethod
    def example_inputs():
        return (torch.randn(3, 4),)


class ScaledTanh(torch.autograd.Function):
    """a * tanh(x) with new-style setup_context, twice differentiable."""

    @staticmethod
    def forward(x, a):
        return a * torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, a = inputs
        ctx.save_for_backward(x, a)

    @staticmethod
    def backward(ctx, grad):
        x, a = ctx.saved_tensors
        t = torch.tanh(x)
        return grad * a * (1 - t * t), (grad * t).sum(0)

    @classmethod
    def example_inputs(cls):
        return (torch.randn(5, 3), torch.randn(3))


class ConvBlock(nn.Module):
    """Conv2d -> softplus."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x):
        return F.softplus(self.conv(x))

    @staticmethod
    def example_inputs():
        return (torch.randn(2, 2, 5, 5),)


def gradoctor_cases():
    return [
        gradoctor.Case("log_softmax", F.log_softmax, (torch.randn(4, 6),), kwargs={"dim": -1}),
        gradoctor.Case("embedding", nn.Embedding(10, 3), (torch.tensor([[1, 2], [3, 1]]),)),
    ]
