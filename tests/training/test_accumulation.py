"""Gradient accumulation: accum 4 x batch 8 gives the same update as 1 x batch 32."""

import pytest
import torch

import gradoctor


@pytest.mark.parametrize("optimizer", ["torch.optim.SGD", "torch.optim.AdamW"])
def test_accumulated_update_matches_large_batch(recipe_factory, optimizer):
    common = {"optimizer._component_": optimizer, "optimizer.lr": 0.1, "train.steps": 3}
    big = gradoctor.train(
        recipe_factory(**common, **{"data.batch_size": 32, "train.accum_steps": 1})
    )
    small = gradoctor.train(
        recipe_factory(**common, **{"data.batch_size": 8, "train.accum_steps": 4})
    )
    for (name, p_big), p_small in zip(big.model.named_parameters(), small.model.parameters()):
        torch.testing.assert_close(p_small, p_big, rtol=1e-5, atol=1e-6, msg=name)
    # The logged loss is the mean over micro-batches, i.e. the large batch's loss.
    for a, b in zip(big.history["loss"], small.history["loss"]):
        assert a == pytest.approx(b, rel=1e-5)


def test_accumulated_gradient_norm_is_the_large_batch_norm(recipe_factory):
    big = gradoctor.train(
        recipe_factory(**{"data.batch_size": 32, "train.steps": 1, "diagnostics.every": 1})
    )
    small = gradoctor.train(
        recipe_factory(
            **{
                "data.batch_size": 8,
                "train.accum_steps": 4,
                "train.steps": 1,
                "diagnostics.every": 1,
            }
        )
    )
    assert small.grad_norm_total["last"] == pytest.approx(big.grad_norm_total["last"], rel=1e-5)
