"""Gradient norms, clipping, the loss-scale ledger and the batch contract, against independent truth."""

import importlib.util
import signal

import pytest
import torch

import gradoctor
from tests.conftest import MODELS

spec = importlib.util.spec_from_file_location("train_models_ref", MODELS)
ref_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref_models)


def _reference_grads(dtype=torch.float64):
    """First step of the base recipe, rebuilt by hand in float64: seeded init, first batch."""
    torch.manual_seed(0)
    model = ref_models.Tiny().to(dtype)
    x, y = next(iter(ref_models.fixed_data(batch_size=8)))
    torch.nn.functional.cross_entropy(model(x.to(dtype)), y).backward()
    return model


def _module_norm(module):
    return torch.sqrt(sum(p.grad.pow(2).sum() for p in module.parameters(recurse=False))).item()


@pytest.mark.parametrize("precision, rel", [("fp32", 1e-5), ("fp16", 2e-2), ("bf16", 5e-2)])
def test_per_module_norms_are_unscaled_and_match_float64(recipe_factory, precision, rel):
    result = gradoctor.train(
        recipe_factory(precision=precision, **{"train.steps": 1, "diagnostics.every": 1})
    )
    ref = _reference_grads()
    names = result.history["module_names"]
    assert names == ["body.0", "head"]
    got = dict(zip(names, result.history["module_grad_norms"][0]))
    assert got["body.0"] == pytest.approx(_module_norm(ref.body[0]), rel=rel)
    assert got["head"] == pytest.approx(_module_norm(ref.head), rel=rel)
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in ref.parameters())).item()
    assert result.grad_norm_total["last"] == pytest.approx(total, rel=rel)
    assert result.grad_norms["head"]["last"] == pytest.approx(_module_norm(ref.head), rel=rel)


def test_clipping_matches_clip_grad_norm_on_unscaled_gradients(recipe_factory):
    lr, max_norm = 1.0, 0.05
    result = gradoctor.train(
        recipe_factory(
            **{
                "optimizer._component_": "torch.optim.SGD",
                "optimizer.lr": lr,
                "train.steps": 1,
                "train.clip_grad_norm": max_norm,
                "precision": "fp16",
            }
        )
    )
    ref = _reference_grads(torch.float32)
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
    for name, p_after in result.model.named_parameters():
        expected = before[name] - lr * ref.get_parameter(name).grad
        torch.testing.assert_close(p_after.detach(), expected, rtol=2e-3, atol=2e-4, msg=name)
    # The recorded norm is before clipping (what the model produced), not after.
    assert result.grad_norm_total["last"] > max_norm * 5


def test_overflow_skips_step_names_params_and_holds_the_scheduler(recipe_factory):
    result = gradoctor.train(
        recipe_factory(
            precision="fp16",
            **{
                "model._component_": f"{MODELS}:OverflowAt",
                "model.bad_calls": [3],
                "optimizer._component_": "torch.optim.SGD",
                "optimizer.lr": 0.1,
                "scheduler": {
                    "_component_": "torch.optim.lr_scheduler.StepLR",
                    "step_size": 1,
                    "gamma": 0.5,
                },
                "train.steps": 6,
                "diagnostics.every": 4,
            },
        )
    )
    assert result.skipped_steps == [3]
    (event,) = result.overflow
    assert event["step"] == 3 and set(event["params"]) == {"body.weight", "body.bias"}
    scales = result.history["loss_scale"]
    assert scales[1] == 65536.0 and scales[2] == 32768.0 and result.loss_scale == 32768.0
    # StepLR halves per optimizer step, but not on the skipped step 3.
    assert result.history["lr"] == pytest.approx([0.1, 0.05, 0.025, 0.025, 0.0125, 0.00625])
    assert result.grad_norms["body"]["nonfinite_steps"] == 1
    assert result.grad_norms["head"]["nonfinite_steps"] == 0


def test_skipped_step_leaves_parameters_untouched(recipe_factory):
    common = {
        "model._component_": f"{MODELS}:OverflowAt",
        "optimizer._component_": "torch.optim.SGD",
        "train.steps": 1,
    }
    skipped = gradoctor.train(
        recipe_factory(precision="fp16", **common, **{"model.bad_calls": [1]})
    )
    torch.manual_seed(0)
    fresh = ref_models.OverflowAt()
    for p, q in zip(fresh.parameters(), skipped.model.parameters()):
        assert torch.equal(p, q)
    assert skipped.skipped_steps == [1]


def test_dict_batches_and_loss_attribute(recipe_factory):
    result = gradoctor.train(
        recipe_factory(
            **{
                "model._component_": f"{MODELS}:DictModel",
                "data.as_dict": True,
                "loss": None,
                "train.steps": 30,
            }
        )
    )
    losses = result.history["loss"]
    assert losses[-1] < losses[0] * 0.9


def test_no_hooks_or_global_state_left_behind(recipe_factory):
    sigint = signal.getsignal(signal.SIGINT)
    deterministic = torch.are_deterministic_algorithms_enabled()
    result = gradoctor.train(
        recipe_factory(
            **{
                "model._component_": f"{MODELS}:Deep",
                "train.checkpoint": ["Block"],
                "train.deterministic": True,
                "diagnostics.histogram_every": 2,
                "train.steps": 4,
                "diagnostics.every": 2,
            }
        )
    )
    for module in result.model.modules():
        assert (
            not module._forward_hooks
            and not module._forward_pre_hooks
            and not module._backward_hooks
        )
        assert "forward" not in module.__dict__
    assert signal.getsignal(signal.SIGINT) is sigint
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_update_ratio_matches_parameter_change(recipe_factory):
    result = gradoctor.train(
        recipe_factory(
            **{
                "optimizer._component_": "torch.optim.SGD",
                "optimizer.lr": 0.5,
                "train.steps": 1,
                "diagnostics.every": 1,
            }
        )
    )
    ref = _reference_grads(torch.float32)
    after = dict(result.model.named_parameters())
    upd = torch.sqrt(
        sum((0.5 * ref.get_parameter(f"head.{n}").grad).pow(2).sum() for n in ("weight", "bias"))
    )
    norm = torch.sqrt(sum(after[f"head.{n}"].detach().pow(2).sum() for n in ("weight", "bias")))
    assert result.update_ratios["head"] == pytest.approx((upd / norm).item(), rel=1e-4)
