"""Shared recipes for the reproducibility tests: the sample MLP set-up with a planted source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
PLANTED = f"{SAMPLES / 'nondeterminism.py'}"


def recipe(tmp_path: Path, model: str = "", **parts: Any) -> dict[str, Any]:
    """An MLP-sized recipe; ``model`` names a factory in ``nondeterminism.py`` (default: the
    healthy ``mlp.py:MLP``); ``parts`` replace whole sections (``data=...``)."""
    target = f"{PLANTED}:{model}" if model else f"{SAMPLES / 'mlp.py'}:MLP"
    out: dict[str, Any] = {
        "model": {"_component_": target, "in_features": 20, "out_features": 4},
        "data": {
            "_component_": "gradoctor.data.synthetic_classification",
            "batch_size": 32,
            "n_samples": 256,
        },
        "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "train": {"steps": 2, "device": "cpu"},
        "output": {"dir": str(tmp_path / "run")},
    }
    out.update(parts)
    return out


@pytest.fixture
def make_recipe(tmp_path: Path):  # noqa: ANN201
    return lambda model="", **parts: recipe(tmp_path, model, **parts)
