"""A layer file whose import fails inside the user's own helper (exit code 2)."""

import torch


def make_scale():
    return torch.ones(3) @ torch.ones(4)  # shape mismatch: raises at import


SCALE = make_scale()
