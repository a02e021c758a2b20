"""Activation checkpointing by class or qualified name: same gradients, fewer saved tensors."""

import copy
import importlib.util

import pytest
import torch

from gradoctor.errors import RecipeError
from gradoctor.training.activation_checkpointing import apply_checkpointing
from tests.conftest import MODELS

spec = importlib.util.spec_from_file_location("train_models_ckpt", MODELS)
train_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_models)


def _grads_and_saved_bytes(model, x, y):
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, sum(saved)


@pytest.mark.parametrize("names", [["Block"], ["blocks.0", "blocks.2"]])
def test_checkpointed_gradients_match(names):
    torch.manual_seed(0)
    plain = train_models.Deep(depth=3)
    checked = copy.deepcopy(plain)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    ref, ref_saved = _grads_and_saved_bytes(plain, x, y)
    undo = apply_checkpointing(checked, names)
    got, got_saved = _grads_and_saved_bytes(checked, x, y)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=0, msg=name)
    assert got_saved < ref_saved  # the checkpointed blocks kept only their inputs
    undo()
    assert all("forward" not in m.__dict__ for m in checked.modules())


def test_unknown_name_is_a_recipe_error_with_suggestion():
    model = train_models.Deep()
    with pytest.raises(RecipeError) as err:
        apply_checkpointing(model, ["Blok"])
    text = str(err.value)
    assert "train.checkpoint[0]" in text and "Block" in text
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_training_with_checkpointing_matches_plain(recipe_factory):
    import gradoctor

    common = {"model._component_": f"{MODELS}:Deep", "train.steps": 4}
    plain = gradoctor.train(recipe_factory(**common))
    checked = gradoctor.train(recipe_factory(**common, **{"train.checkpoint": ["Block"]}))
    assert checked.history["loss"] == plain.history["loss"]
    for p, q in zip(plain.model.parameters(), checked.model.parameters()):
        assert torch.equal(p, q)
    assert checked.memory["saved_for_backward"] < plain.memory["saved_for_backward"]
