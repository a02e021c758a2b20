"""On CUDA (run by bench/gpu_check.sh): atomics found and fixed, one host sync per step."""

from __future__ import annotations

import pytest
import torch

import gradoctor
from gradoctor.recipe import load_recipe
from gradoctor.reproducibility.recorder import OpDigestRecorder
from gradoctor.training.build import build_state
from gradoctor.training.step import StepConfig, TrainStep
from tests.conftest import cuda_host_syncs

pytestmark = pytest.mark.cuda
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)


def test_duplicate_index_add_is_localised_and_fixed_by_deterministic_mode(make_recipe) -> None:  # noqa: ANN001
    recipe = make_recipe("DuplicateIndexAdd")
    recipe["train"]["device"] = "cuda"
    for _ in range(3):  # atomics: a pair can agree by chance
        result = gradoctor.repro(recipe, steps=2)
        if not result.reproducible:
            break
    div = result.first_divergence
    assert div is not None, "index_add_ with duplicates was reproducible three times"
    assert (div.phase, div.module, div.op) == ("forward", "source", "aten.index_add_")
    assert div.cause_code == "nondeterministic_kernel"
    det = result.deterministic_mode
    assert det is not None and det.reproducible and det.time_ratio is not None


def test_one_host_sync_per_recorded_step(make_recipe) -> None:  # noqa: ANN001
    raw = make_recipe()
    raw["train"]["device"] = "cuda"
    recipe = load_recipe(raw)
    state, _ = build_state(recipe, torch.device("cuda"))
    step = TrainStep(state, StepConfig.from_recipe(recipe))
    recorder = OpDigestRecorder(state.model)
    step.run([recorder])  # warm-up: lazy initialisation may sync
    try:
        syncs = cuda_host_syncs(lambda: step.run([recorder]), times=3)
    finally:
        step.close()
    assert len(syncs) <= 3, syncs  # one per step
