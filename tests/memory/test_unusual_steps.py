"""Steps whose storages do not all start and end inside them: a data component that builds
its tensors when an epoch starts, and an optimizer that replaces its state tensors. On CPU the
self-check compares the same tracked bytes, so predictions must agree to the byte (up to the
fp16 scaler's few bytes when fp16 is predicted from bf16)."""

import gradoctor
from gradoctor.memory.measure import Config, ProfileSession
from gradoctor.recipe import load_recipe
from tests.memory.conftest import MODELS, memory_recipe


def _assert_exact(profile):
    assert profile.checks
    for check in profile.checks:
        assert check.status == "ok", check
        assert abs(check.predicted - check.measured) <= 64, check
    assert sum(c.bytes for c in profile.breakdown) == profile.peak


def test_a_data_set_built_at_each_epoch_is_not_counted_as_one_steps_batch():
    """48 samples in batches of 16: an epoch restarts inside every third step. Its tensors
    are held by the iterator, not allocated by the step; batches are views into them."""
    recipe = memory_recipe("Stack", **{"data._component_": f"{MODELS}:EpochData"})
    _assert_exact(gradoctor.memory_profile(recipe, batch_sizes="8,16,32"))


def test_state_replaced_by_the_optimizer_is_freed_in_the_trace():
    recipe = memory_recipe(
        "Stack", **{"optimizer._component_": f"{MODELS}:ReplacingMomentum", "model.width": 64}
    )
    session = ProfileSession(load_recipe(recipe))
    config = Config("fp32", (), 16)
    peaks = [session.step(config, track=True).trace.peak()[0] for _ in range(5)]
    assert peaks[0] < peaks[1] and len(set(peaks[1:])) == 1  # steady from step 2 on
    trace = session.step(config, track=True).trace
    freed = [r for r in trace.records if r.op == "static" and r.free is not None]
    state_bytes = trace.static["optimizer_state"]
    assert sum(r.nbytes for r in freed if r.kind == "optimizer_state") == state_bytes
    _assert_exact(gradoctor.memory_profile(recipe, batch_sizes="8,16"))


def test_a_recipe_at_batch_size_1_whose_ops_change_with_the_batch():
    """Batch 1 and 2 do not pair up event by event (a reshape copies only from 2 samples on):
    a third size is measured, the batch fit uses 2 and 3, and batch 1 is its own measurement."""
    recipe = memory_recipe("Transposed", **{"data.batch_size": 1})
    profile = gradoctor.memory_profile(recipe, batch_sizes="1,2,4,8")
    assert profile.batch_sizes_measured == [1, 2, 3]
    _assert_exact(profile)
