"""On CUDA (run by bench/gpu_check.sh): the audited step makes one host sync."""

from __future__ import annotations

import warnings

import pytest
import torch

from gradoctor.numerics.patterns import PatternDetector
from gradoctor.recipe import load_recipe
from gradoctor.training.build import build_state
from gradoctor.training.step import StepConfig, TrainStep

pytestmark = pytest.mark.cuda
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)


@pytest.mark.parametrize("family", ["naive_softmax", "log_of_sigmoid", "naive_variance"])
def test_one_host_sync_per_audited_step(make_recipe, family: str) -> None:  # noqa: ANN001
    raw = make_recipe("Unstable", "bf16", family=family)
    raw["train"]["device"] = "cuda"
    recipe = load_recipe(raw)
    state, _ = build_state(recipe, torch.device("cuda"))
    step = TrainStep(state, StepConfig.from_recipe(recipe))
    detector = PatternDetector(state.model, target=torch.float16)
    step.run([detector])  # warm-up: lazy initialisation may sync
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                step.run([detector])
    finally:
        torch.cuda.set_sync_debug_mode(0)
        step.close()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 3, [str(w.message) for w in syncs]
    assert any(f.code == family for f in detector.findings.values())
