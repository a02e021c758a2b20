"""memory_profile end to end on CPU (tracked bytes): breakdown, modules, self-check, plan."""

import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

import gradoctor
from gradoctor.errors import UsageError
from gradoctor.memory.measure import ProfileSession
from tests.assets.memory.models import D, H
from tests.memory.conftest import memory_recipe

BUDGET = 20 * 1024  # the Stack's fp32 peak at batch 16 is ~21 KiB; checkpointing is needed


@pytest.fixture(scope="module")
def profile():
    return gradoctor.memory_profile(memory_recipe("Stack"), batch_sizes="8,16,32", budget=BUDGET)


def test_breakdown_sums_to_the_peak(profile):
    assert profile.method == "tracked_tensors"
    assert sum(c.bytes for c in profile.breakdown) == profile.peak
    assert sum(c.share for c in profile.breakdown) == pytest.approx(1.0)
    by_name = {c.name: c.bytes for c in profile.breakdown}
    assert by_name["optimizer_state"] > 0 and by_name["activations"] > 0


def test_self_check_runs_every_configuration_and_agrees(profile):
    assert len(profile.checks) == len(profile.what_if) == 3 * 2 * 3  # precisions x ckpt x batch
    for check in profile.checks:
        assert check.status == "ok", check
        assert abs(check.error_pct) < 1.0, check
    measured_rows = [w for w in profile.what_if if w.measured]
    assert {(w.precision, w.batch_size) for w in measured_rows} == {
        ("fp32", 8),
        ("fp32", 16),
        ("bf16", 8),
        ("bf16", 16),
    }


def test_plan_fits_the_budget_and_is_ready_to_paste(profile):
    plan = profile.plan
    assert plan.budget == BUDGET and plan.budget_source == "--budget"
    assert plan.fits and plan.predicted_peak <= plan.budget < profile.peak
    assert plan.modules and "checkpoint: [" in plan.recipe_lines
    assert plan.max_batch_size["fp32"]["plan"] >= plan.max_batch_size["fp32"]["off"] >= 1
    # the ready-to-paste names are accepted by the loop's checkpointing
    recipe = memory_recipe("Stack", **{"train.checkpoint": plan.recipe_names})
    assert gradoctor.validate(recipe).train.checkpoint == plan.recipe_names


def test_peak_and_cost_are_reported(profile):
    assert profile.first_step.step == "first" and profile.steady.step == "steady"
    assert profile.first_step.bytes < profile.steady.bytes  # optimizer state from step 1 on
    assert profile.steady.phase in ("forward", "backward", "optimizer")
    assert profile.cost["profile_steps"] == 6  # warm-up, 2 batch sizes x 2 precisions, timing
    data = profile.to_dict()
    assert data["plan"]["modules"] == profile.plan.modules


def test_module_table_matches_the_closed_form():
    p = gradoctor.memory_profile(memory_recipe("TwoLayer"), check=False)
    by_name = {m.name: m for m in p.modules}
    b = p.batch_size
    assert (by_name["fc1"].saved, by_name["act"].saved, by_name["fc2"].saved) == (
        4 * b * D,
        4 * b * H,
        4 * b * H,
    )
    assert by_name[""].saved_total == 4 * b * (D + H)
    assert by_name["fc1"].recompute_flops == 2 * b * D * H  # FlopCounterMode: 2 * M * K * N


def test_nothing_fits_returns_the_smallest_configuration():
    p = gradoctor.memory_profile(memory_recipe("Stack"), budget="1KiB", check=False)
    assert not p.plan.fits
    smallest = p.plan.smallest
    assert smallest["batch_size"] == 1
    peaks = [w.predicted_peak for w in p.what_if]
    assert smallest["predicted_peak"] <= min(peaks)
    assert all(v == {"off": 0, "plan": 0} for v in p.plan.max_batch_size.values())


def test_data_without_batch_size_is_measured_at_its_own_size_only():
    recipe = memory_recipe("TwoLayer", data={"_component_": memory_recipe()["data"]["_component_"]})
    recipe["data"]["_component_"] = recipe["data"]["_component_"].replace(
        ":data", ":fixed_size_data"
    )
    p = gradoctor.memory_profile(recipe, batch_sizes="4,8")
    assert p.batch_sizes_measured == [16]
    assert {w.batch_size for w in p.what_if} == {16}
    assert any("batch_size keyword" in n for n in p.notes)


def test_no_hooks_left_behind():
    session_models = []
    original = ProfileSession.__init__

    def spy(self, recipe):
        original(self, recipe)
        session_models.append(self.model)

    ProfileSession.__init__ = spy
    try:
        gradoctor.memory_profile(memory_recipe("Stack"), check=True, batch_sizes="4")
    finally:
        ProfileSession.__init__ = original
    (model,) = session_models
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
        assert "forward" not in module.__dict__  # checkpoint wrappers removed
    assert _get_current_dispatch_mode() is None
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def test_usage_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="recipe.yaml"):
        gradoctor.memory_profile()
    with pytest.raises(UsageError, match="does not exist"):
        gradoctor.memory_profile(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="CUDA"):
        if not torch.cuda.is_available():
            gradoctor.memory_profile(memory_recipe(), snapshot=tmp_path / "s.pickle")
        else:
            raise UsageError("CUDA present: skip")
    with pytest.raises(UsageError, match="GiB"):
        gradoctor.memory_profile(memory_recipe(), budget="3 parsecs")
