"""A plain multi-layer perceptron: the smallest sample model for gradoctor recipes.

Standalone file (loaded by path from recipes, e.g. ``../sample_models/mlp.py:MLP``);
depends on nothing but PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``depth`` hidden layers of ``Linear -> GELU``, then a linear output layer.

    Input ``[B, in_features]`` float; output ``[B, out_features]`` (class logits for
    CrossEntropyLoss, or regression predictions for MSELoss).
    """

    def __init__(
        self, in_features: int = 20, hidden: int = 64, out_features: int = 4, depth: int = 2
    ):
        super().__init__()
        if depth < 0:
            raise ValueError(f"depth must be >= 0 (number of hidden layers), got {depth}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
