"""The profiled steps are applied steps even when fp16's loss scaler would skip its first
steps: the steady state includes optimizer state created by a step (SGD momentum)."""

import gradoctor
from tests.conftest import MODELS, base_recipe


def test_fp16_profile_counts_momentum_even_when_calibration_skips(tmp_path):
    recipe = base_recipe(
        tmp_path / "run",
        **{
            "model._component_": f"{MODELS}:HugeGradients",
            "precision": "fp16",
            "optimizer._component_": "torch.optim.SGD",
            "optimizer.lr": 1e-6,
            "optimizer.momentum": 0.9,
            "train.steps": 3,
        },
    )
    assert gradoctor.train(recipe).skipped_steps == [1, 2, 3]  # the training scaler does skip
    profile = gradoctor.memory_profile(recipe, batch_sizes="8", check=False).to_dict()
    sizes = {c["name"]: c["bytes"] for c in profile["breakdown"]}
    assert sizes["optimizer_state"] == sizes["parameters"]  # one momentum buffer per parameter
