"""The runs shared by the 2-process worker and the single-process references."""

from tests.conftest import ASSETS

DIST_MODELS = ASSETS / "distributed_models.py"
COMMON = {"train.steps": 6, "train.accum_steps": 2, "diagnostics.every": 3, "train.seed": 0}

CASES = {
    # per-rank batch 8 x 2 ranks == the single-process batch of 16 (same samples per step)
    "ddp": {
        "distributed": {**COMMON, "data.batch_size": 8, "distributed": {"strategy": "ddp"}},
        "single": {**COMMON, "data.batch_size": 16},
    },
    "fsdp": {
        "distributed": {**COMMON, "data.batch_size": 8, "distributed": {"strategy": "fsdp"}},
        "single": {**COMMON, "data.batch_size": 16},
    },
    "nan_on_rank1": {
        "distributed": {
            "train.steps": 6,
            "diagnostics.every": 3,
            "data._component_": f"{DIST_MODELS}:nan_at_index",
            "data.batch_size": 8,
            "distributed": {"strategy": "ddp"},
        },
    },
}
