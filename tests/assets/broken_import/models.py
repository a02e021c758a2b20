"""A user file that fails while being imported (for error-reporting tests)."""

import numpy  # noqa: F401  (a real import that succeeds)
import torch
from torch import nn

SCALE = 2.0

x = undefined_name  # noqa: F821  <- the line the error report must point at


class MLP(nn.Module):
    def __init__(self, hidden: int = 8):
        super().__init__()
        self.net = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
