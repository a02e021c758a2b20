import copy
from pathlib import Path

import pytest

from tests.conftest import set_dotted

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
    return set_dotted(copy.deepcopy(recipe), changes)


@pytest.fixture
def make_recipe():
    return memory_recipe
