"""A small CNN for scikit-learn's 8x8 handwritten digits (``gradoctor.data.digits``).

Standalone file (loaded by path from recipes, e.g. ``../sample_models/cnn.py:SmallCNN``);
depends on nothing but PyTorch. Normalization is GroupNorm, not BatchNorm: BatchNorm's
running statistics would be updated twice per step under activation checkpointing (once in
the forward, once in the recomputation), and GroupNorm behaves the same in train and eval.
The repeated conv blocks are instances of :class:`Block`, so a recipe can checkpoint them
by class name (``train.checkpoint: [Block]``).
"""

from __future__ import annotations

import torch
from torch import nn


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 that divides ``channels``."""
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class Block(nn.Module):
    """``Conv3x3 -> GroupNorm -> ReLU``, keeping the spatial size.

    ``[B, in_channels, H, W] -> [B, out_channels, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.GroupNorm(_groups(out_channels), out_channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class SmallCNN(nn.Module):
    """Four :class:`Block` s with two 2x2 max-pools, global average pool, linear head.

    Input ``[B, in_channels, 8, 8]`` (any H, W >= 4 works); output logits
    ``[B, n_classes]``. ``width`` is the channel count of the first two blocks; the last
    two use ``2 * width``.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            Block(in_channels, width),
            Block(width, width),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            Block(width, 2 * width),
            Block(2 * width, 2 * width),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # accept flattened [B, H*W] digits too
            side = int(round(x.shape[1] ** 0.5))
            x = x.view(x.shape[0], 1, side, side)
        x = self.features(x)
        return self.head(self.pool(x).flatten(1))
