import copy
from pathlib import Path

import pytest

MODELS = Path(__file__).parents[1] / "assets" / "memory" / "models.py"


def memory_recipe(model: str = "TwoLayer", **changes) -> dict:
    """A CPU recipe over tests/assets/memory/models.py; ``changes`` are dotted-key overrides."""
    recipe = {
        "model": {"_component_": f"{MODELS}:{model}"},
        "data": {"_component_": f"{MODELS}:data", "batch_size": 16},
        "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "precision": "fp32",
        "train": {"steps": 1, "seed": 0, "device": "cpu"},
    }
    recipe = copy.deepcopy(recipe)
    for key, value in changes.items():
        node = recipe
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return recipe


@pytest.fixture
def make_recipe():
    return memory_recipe
