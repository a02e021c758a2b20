"""The checkpointing replay against real checkpointed steps, for every name a recipe could
checkpoint (each module's qualified name and each class name), in every precision.

On CPU the measured quantity is the tracked bytes the replay starts from, so the prediction is
exact but for one effect the replay does not model: a recomputed tensor is freed as soon as the
backward node that unpacks it returns, before the engine reduces that node's broadcast gradients
(a bias gradient's ``sum_to``), while a plainly saved one lives until the node's saved variables
are released, just after: the replay over-predicts by at most a bias gradient (32 bytes of
19 KiB for ``Stack`` in 16-bit; 0.5% allowed, most cases exact). Covered: residual blocks with BatchNorm and in-place
ReLU (torchvision's ResNet pattern), a region whose output is also saved by the op after it
(its recomputed copy replaces the original), autocast weight copies that the recomputation
makes again, a ModuleList named as a whole (each entry is checkpointed), nested names (the
outermost wins) and regions that save nothing."""

import pytest

from gradoctor.memory.measure import Config, ProfileSession
from gradoctor.memory.model import _recompute_peak, replay
from gradoctor.recipe import load_recipe
from gradoctor.train.activation_checkpointing import checkpoint_targets
from tests.memory.conftest import MODELS, memory_recipe

CASES = {
    "ResNetish": {"data._component_": f"{MODELS}:images", "data.batch_size": 8},
    "SharedSave": {},
    "Stack": {"model.depth": 3},
}


def _names(model):
    qnames = [q for q, _ in model.named_modules() if q]
    classes = sorted({type(m).__name__ for q, m in model.named_modules() if q})
    return qnames + classes + [qnames[: len(qnames) // 2]]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("model", sorted(CASES))
def test_replay_equals_the_measured_checkpointed_peak(model, precision):
    recipe = memory_recipe(model, precision=precision, **CASES[model])
    session = ProfileSession(load_recipe(recipe))
    batch = session.recipe_batch_size
    session.step(Config(precision, (), batch), track=True)  # optimizer state now exists
    plain = session.step(Config(precision, (), batch), track=True).trace
    wrong = []
    for names in _names(session.model):
        names = names if isinstance(names, list) else [names]
        targets, missing = checkpoint_targets(session.model, names)
        assert not missing
        measured = session.step(Config(precision, tuple(names), batch), track=True).trace
        predicted = replay(plain, targets).peak
        if abs(predicted - measured.peak()[0]) > 0.005 * measured.peak()[0]:
            wrong.append((names, predicted, measured.peak()[0]))
    assert not wrong


def test_a_module_list_named_as_a_whole_means_each_entry():
    session = ProfileSession(load_recipe(memory_recipe("Stack", **{"model.depth": 3})))
    assert checkpoint_targets(session.model, ["blocks"]) == (
        ["blocks.0", "blocks.1", "blocks.2"],
        [],
    )
    assert checkpoint_targets(session.model, ["blocks", "blocks.1.fc", "nope"]) == (
        ["blocks.0", "blocks.1", "blocks.2"],
        ["nope"],
    )


def test_an_ops_own_cuda_peak_recurs_in_the_recomputation():
    """CUDA traces carry each op's allocator peak (outputs and workspace, e.g. cuDNN's): an op
    inside a checkpointed module runs again in its recomputation, so its peak counts there too.
    CPU traces have none, so one is injected: a 1 GB workspace for the module's first op."""
    session = ProfileSession(load_recipe(memory_recipe("Stack", **{"model.depth": 3})))
    session.step(Config("fp32", (), 16), track=True)
    trace = session.step(Config("fp32", (), 16), track=True).trace
    call = next(c for c in trace.calls if c.qname == "blocks.1")
    without = replay(trace, ["blocks.1"]).peak
    huge = 10**9
    trace.op_spikes = [(call.enter, huge)]
    # nothing else is alive in the recomputation when its first op starts: the spike is all
    assert _recompute_peak(trace, trace.calls.index(call), []) == huge
    with_spike = replay(trace, ["blocks.1"])
    assert with_spike.phase_peaks["forward"] > huge  # the op itself
    assert with_spike.phase_peaks["backward"] > huge  # and again in the recomputation
    trace.op_spikes = [(call.exit, 123)]  # an op after the module: not part of its recompute
    assert _recompute_peak(trace, trace.calls.index(call), []) < huge
    assert replay(trace, ["blocks.1"]).peak == without
