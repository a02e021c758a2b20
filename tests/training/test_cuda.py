"""The CUDA path: allocator peaks per phase, no host sync on ordinary steps, float64-exact norms.

Skipped without a GPU; `bench/gpu_check.sh` runs them (`pytest -m cuda`)."""

from pathlib import Path

import pytest
import torch

import gradoctor
from gradoctor.recipe import load_recipe
from gradoctor.training.loop import Trainer
from tests.conftest import MODELS

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["mlp", "cnn", "tiny_lm"])
def test_sample_recipes_on_cuda_report_phase_peaks(name, tmp_path):
    result = gradoctor.train(
        ROOT / "recipes" / f"{name}.yaml",
        train={"steps": 20, "device": "cuda"},
        output={"dir": str(tmp_path)},
    )
    mem = result.memory
    assert result.device.startswith("cuda") and mem["method"] == "cuda_allocator"
    for phase in ("forward_peak", "backward_peak", "optimizer_peak"):
        assert mem["params"] <= mem[phase] <= mem["device_total"]
    # the optimizer phase holds parameters, gradients and optimizer state at once
    assert mem["optimizer_peak"] >= mem["params"] + mem["optimizer_state"]
    losses = result.history["loss"]
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ordinary_steps_make_no_host_sync(recipe_factory, precision):
    recipe = load_recipe(
        recipe_factory(
            precision=precision,
            **{
                "data._component_": f"{MODELS}:device_data",
                "data.device": "cuda",
                "train.device": "cuda",
                "train.steps": 100,
                "diagnostics.every": 10,
                "train.clip_grad_norm": 1.0,
            },
        )
    )
    trainer = Trainer(recipe)
    trainer.step()
    trainer.step()  # steps 1-2 measure memory (allocator counters only, still no sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(6):  # steps 3..8: neither log nor histogram nor memory steps
            trainer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.flush()
    trainer.record.tb.close()
    assert len(trainer.history.loss) == 8


def test_cuda_norms_match_float64_reference(recipe_factory):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_models_cuda_ref", MODELS)
    ref_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref_models)
    result = gradoctor.train(
        recipe_factory(**{"train.device": "cuda", "train.steps": 1, "diagnostics.every": 1})
    )
    torch.manual_seed(0)
    ref = ref_models.Tiny().double()
    x, y = next(iter(ref_models.fixed_data(batch_size=8)))
    torch.nn.functional.cross_entropy(ref(x.double()), y).backward()
    got = dict(zip(result.history["module_names"], result.history["module_grad_norms"][0]))
    want = torch.sqrt(sum(p.grad.pow(2).sum() for p in ref.head.parameters())).item()
    assert got["head"] == pytest.approx(want, rel=1e-4)


def test_fp16_overflow_on_cuda_is_skipped_and_attributed(recipe_factory):
    result = gradoctor.train(
        recipe_factory(
            precision="fp16",
            **{
                "model._component_": f"{MODELS}:OverflowAt",
                "model.bad_calls": [2],
                "train.device": "cuda",
                "train.steps": 4,
            },
        )
    )
    assert result.skipped_steps == [2]
    assert set(result.overflow[0]["params"]) == {"body.weight", "body.bias"}
