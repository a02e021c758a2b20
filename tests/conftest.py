import copy
import socket
from pathlib import Path

import pytest
import torch

ROOT_DIR = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
MODELS = ASSETS / "train_models.py"


def set_dotted(recipe: dict, changes: dict) -> dict:
    """Apply ``{"a.b": value}`` overrides to a nested recipe dict in place; returns it."""
    for key, value in changes.items():
        node = recipe
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return recipe


def base_recipe(out_dir: Path, **changes) -> dict:
    """A dict recipe over tests/assets/train_models.py; ``changes`` are dotted-key overrides."""
    recipe = {
        "model": {"_component_": f"{MODELS}:Tiny"},
        "data": {"_component_": f"{MODELS}:fixed_data", "batch_size": 8},
        "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-2},
        "precision": "fp32",
        "train": {"steps": 10, "seed": 0, "device": "cpu"},
        "diagnostics": {"every": 5, "histogram_every": 0},
        "output": {"dir": str(out_dir)},
    }
    return set_dotted(copy.deepcopy(recipe), changes)


@pytest.fixture
def recipe_factory(tmp_path):
    counter = iter(range(1000))

    def make(**changes):
        return base_recipe(tmp_path / f"run{next(counter)}", **changes)

    return make


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def free_port() -> int:
    """A free TCP port on the loopback interface (for a spawned process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cuda_host_syncs(run, times: int) -> list[str]:
    """The host syncs CUDA reports (``set_sync_debug_mode("warn")``) while ``run()`` is
    called ``times`` times; call it once before, so that lazy initialisation is not counted."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(times):
                run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return [str(w.message) for w in caught if "synchroniz" in str(w.message)]
