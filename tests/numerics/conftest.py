"""Recipes for the numerics audit tests: an MLP-sized set-up around a sample model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
UNSTABLE = f"{SAMPLES / 'unstable_numerics.py'}"


def recipe(tmp_path: Path, model: str, precision: str = "fp32", **kwargs: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "_component_": "gradoctor.data.synthetic_classification",
        "batch_size": 32,
        "n_samples": 256,
    }
    if model == "ResNetish":
        data = {"_component_": "gradoctor.data.digits", "batch_size": 32}
    return {
        "model": {"_component_": f"{UNSTABLE}:{model}", **kwargs},
        "data": data,
        "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "precision": precision,
        "train": {"steps": 3, "device": "cpu"},
        "output": {"dir": str(tmp_path / "run")},
    }


@pytest.fixture
def make_recipe(tmp_path: Path):  # noqa: ANN201
    return lambda model, precision="fp32", **kw: recipe(tmp_path, model, precision, **kw)
