"""A layer file with no cases: the Module lacks example_inputs, the helper is not a case."""

import torch
from torch import nn


class NoExamples(nn.Module):
    def forward(self, x):
        return x * 2


def helper(x):
    return torch.tanh(x)
