"""Model and data for the recipe contract test (tests/assets/contract/recipe.yaml)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

IN_FEATURES = 20
CLASSES = 4
SAMPLES = 256


class MLP(nn.Module):
    """20 inputs -> ``hidden`` -> 4 classes."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(
            nn.Linear(IN_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_data(batch_size: int = 32) -> DataLoader:
    """A fixed synthetic classification set (its own generator), shuffled each epoch."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(SAMPLES, IN_FEATURES, generator=g)
    w = torch.randn(IN_FEATURES, CLASSES, generator=g)
    y = (x @ w).argmax(dim=1)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
