"""A model whose forward raises: the commands' "your code raised" path (exit 1, your frame)."""

import torch


class Broken(torch.nn.Module):
    def __init__(self, in_features: int = 20, out_features: int = 4):
        super().__init__()
        self.lin = torch.nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("planted failure")
