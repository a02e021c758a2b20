"""The `distributed:` recipe block, and world size 1 without torchrun (in-process store)."""

import pytest

import gradoctor
from gradoctor.errors import RecipeError


def test_bad_distributed_values_are_collected_with_key_paths(recipe_factory):
    with pytest.raises(RecipeError) as err:
        gradoctor.validate(recipe_factory(distributed={"strategy": "zero3", "backnd": "gloo"}))
    text = str(err.value)
    assert "distributed.strategy" in text and "ddp | fsdp" in text
    assert "distributed.backnd" in text and "did you mean 'backend'" in text


def test_unsupported_combinations_say_what_to_do(recipe_factory):
    with pytest.raises(RecipeError) as err:
        gradoctor.validate(
            recipe_factory(precision="fp16", distributed={"strategy": "fsdp", "backend": "nccl"})
        )
    text = str(err.value)
    assert "nccl needs CUDA" in text and "fsdp with precision fp16" in text


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_world_size_one_matches_a_plain_run_and_resumes(recipe_factory, strategy):
    changes = {"train.accum_steps": 2, "train.clip_grad_norm": 0.5}
    dist = {"distributed": {"strategy": strategy}}
    plain = gradoctor.train(recipe_factory(**changes, **{"train.steps": 6}))
    first = gradoctor.train(recipe_factory(**changes, **dist, **{"train.steps": 3}))
    resumed = gradoctor.train(
        recipe_factory(**changes, **dist, **{"train.steps": 6}), resume=first.output_dir
    )
    assert resumed.distributed["world_size"] == 1
    assert resumed.history["loss"] == pytest.approx(plain.history["loss"], rel=1e-6)
