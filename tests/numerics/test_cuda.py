"""On CUDA (run by bench/gpu_check.sh): the audited step makes one host sync."""

from __future__ import annotations

import pytest
import torch

from gradoctor.numerics.patterns import PatternDetector
from gradoctor.recipe import load_recipe
from gradoctor.training.build import build_state
from gradoctor.training.step import StepConfig, TrainStep
from tests.conftest import cuda_host_syncs

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
    try:
        syncs = cuda_host_syncs(lambda: step.run([detector]), times=3)
    finally:
        step.close()
    assert len(syncs) <= 3, syncs  # one per step
    assert any(f.code == family for f in detector.findings.values())
