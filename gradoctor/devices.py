"""The training device a recipe's ``train.device`` names (a base module: torch and errors only).

It sits below every layer that needs a device: ``distributed`` (one device per rank) and
``training`` (``gradoctor.training.environment`` re-exports it).
"""

from __future__ import annotations

import torch

from gradoctor.errors import RecipeError, RecipeProblem


def pick_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without CUDA is a recipe error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError(
                [
                    RecipeProblem(
                        "train.device",
                        f"'{spec}' requested but CUDA is not available",
                        hint="use device: auto or cpu",
                    )
                ]
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RecipeError(
                [
                    RecipeProblem(
                        "train.device",
                        f"'{spec}' but only {torch.cuda.device_count()} CUDA device(s)",
                        hint="use cuda:0",
                    )
                ]
            )
    return device
