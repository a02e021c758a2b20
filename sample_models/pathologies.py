"""The pathology zoo: small models that each reproduce one training failure on CPU.

Standalone file, loaded by path from ``recipes/zoo/*.yaml``. Each class docstring says what
goes wrong, where, and which gradoctor diagnosis names it.
"""

from __future__ import annotations

import torch
from torch import nn


class DeepSigmoid(nn.Module):
    """``depth`` Linear+Sigmoid layers: each sigmoid passes back at most 1/4 of the gradient,
    so ``layers.0`` gets orders of magnitude less than the head -> ``vanishing_gradients``."""

    def __init__(self, in_features: int = 20, width: int = 32, depth: int = 12, n_classes: int = 4):
        super().__init__()
        dims = [in_features] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = nn.Sigmoid()
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


class DeadReLU(nn.Module):
    """A hidden layer whose bias starts at -10: its ReLU (``act``) outputs 0 for nearly every
    input and unit, and no gradient ever revives it -> ``dead_units`` at ``act``."""

    def __init__(
        self, in_features: int = 20, width: int = 64, n_classes: int = 4, bias: float = -10.0
    ):
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.hidden = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.head = nn.Linear(width, n_classes)
        nn.init.constant_(self.hidden.bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.hidden(torch.tanh(self.inp(x)))))


class LargeActivations(nn.Module):
    """Inputs that were never normalized (scaled by ``input_scale``): the first projection
    (``inp``) outputs ~1e5 — fine in fp32/bf16, beyond fp16's 65504 — so under fp16 every
    step overflows in ``inp``'s matmul and the loss scaler keeps backing off ->
    ``loss_scale_collapse`` (and ``nonfinite_origin`` at ``inp``)."""

    def __init__(
        self, in_features: int = 20, width: int = 64, n_classes: int = 4, input_scale: float = 3.0e4
    ):
        super().__init__()
        self.input_scale = input_scale
        self.inp = nn.Linear(in_features, width)
        self.norm = nn.LayerNorm(width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.inp(x * self.input_scale)))
        return self.head(torch.relu(self.hidden(h)))


class LogEnergy(nn.Module):
    """``log(sum(x) - 1)``: NaN as soon as a sample's activations sum below 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.sum(dim=-1, keepdim=True) - 1.0)


class NaNInside(nn.Module):
    """A body, then ``energy`` (a :class:`LogEnergy`) taking the log of a value that goes
    negative -> ``nonfinite_loss``, with ``nonfinite_origin`` naming ``energy`` and op ``log``."""

    def __init__(self, in_features: int = 20, width: int = 32, n_classes: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Linear(width, width)
        )
        self.energy = LogEnergy()
        self.head = nn.Linear(width + 1, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(torch.cat([h, self.energy(h)], dim=-1))


class _BadBackward(torch.autograd.Function):
    """Forward ``2 * x``; backward divides by a zero it computes: NaN gradients."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad * (grad - grad) / (grad - grad)


class BadGrad(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BadBackward.apply(x)


class NaNInBackward(nn.Module):
    """A custom ``autograd.Function`` (in ``bad``) whose forward is right and whose backward
    returns NaN: the loss stays finite, the gradients do not -> ``nonfinite_origin`` in the
    backward of ``bad``."""

    def __init__(self, in_features: int = 20, width: int = 32, n_classes: int = 4):
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.bad = BadGrad()
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bad(self.inp(x))))


class BadInitReLU(nn.Module):
    """``depth`` Linear+ReLU layers whose weights have std ``gain`` x Kaiming's sqrt(2/fan_in):
    with gain 2.5 the activations grow ~2.5x per layer (1e4 after a dozen) and the loss at step
    1 is thousands of times chance; gain 1 is the healthy Kaiming init."""

    def __init__(self, in_features=20, hidden=64, out_features=4, depth=12, gain=2.5):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(in_features if i == 0 else hidden, hidden) for i in range(depth)
        )
        self.head = nn.Linear(hidden, out_features)
        for layer in [*self.layers, self.head]:
            nn.init.normal_(layer.weight, std=gain * (2.0 / layer.in_features) ** 0.5)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


class WideBranchResidual(nn.Module):
    """``blocks`` residual blocks x + fc2(relu(fc1(x))) whose branches are initialised with
    ``branch_gain`` x Kaiming: with 2.0 the residual stream grows ~3-4x per block; with
    ``branch_gain: 0`` (a zero-initialised last layer) each block starts as the identity."""

    def __init__(self, in_features=20, width=64, out_features=4, blocks=8, branch_gain=2.0):
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.fc1 = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.head = nn.Linear(width, out_features)
        for fc1, fc2 in zip(self.fc1, self.fc2):
            nn.init.normal_(fc1.weight, std=branch_gain * (2.0 / width) ** 0.5)
            nn.init.normal_(fc2.weight, std=branch_gain * (2.0 / width) ** 0.5)

    def forward(self, x):
        x = self.inp(x)
        for fc1, fc2 in zip(self.fc1, self.fc2):
            x = x + fc2(torch.relu(fc1(x)))
        return self.head(x)
