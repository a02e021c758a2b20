"""The checkpointing replay against real checkpointed steps, for every name a recipe could
checkpoint (each module's qualified name and each class name), in every precision.

On CPU the measured quantity is the tracked bytes the replay starts from, so the prediction is
exact, phase by phase, but for one effect the replay does not model, on the safe side: a
recomputed tensor is freed as soon as the backward node that unpacks it returns, before the
engine reduces that node's broadcast gradients (a bias gradient's ``sum_to``), while a plainly
saved one lives until the node's saved variables are released, just after: at most a bias
gradient too much (32 bytes of 19 KiB for ``Stack`` in 16-bit; 0.5% allowed). Inside a
checkpointed module's own forward, what it would have saved is freed when its code drops it,
as in the same forward run under no_grad (``natural_frees``), as ``memory_profile`` does.

Covered: residual blocks with BatchNorm and in-place
ReLU (torchvision's ResNet pattern), a region whose output is also saved by the op after it
(its recomputed copy replaces the original), autocast weight copies that the recomputation
makes again, a ModuleList named as a whole (each entry is checkpointed), nested names (the
outermost wins), regions that save nothing, a recomputation that stops early (at the region's
last save: dropout's mask), a region output saved only after the region, a region input saved
after it (the checkpoint keeps it alive), a region output saved after it too (the original goes
when that saver lets go, before the recomputation), and gradient accumulation."""

import pytest

import gradoctor
from gradoctor.memory.measure import Config, ProfileSession
from gradoctor.memory.model import _recompute_peak, natural_frees, replay
from gradoctor.recipe import load_recipe
from gradoctor.training.activation_checkpointing import checkpoint_targets
from tests.memory.conftest import MODELS, memory_recipe

BUDGET = 1 << 30

CASES = {
    "ResNetish": {"data._component_": f"{MODELS}:images", "data.batch_size": 8},
    "SharedSave": {},
    "Stack": {"model.depth": 3},
    "DropNet": {},
    "TwoOutNet": {},
    "GateNet": {},
    "TanhChain": {},
}


def _names(model):
    qnames = [q for q, _ in model.named_modules() if q]
    classes = sorted({type(m).__name__ for q, m in model.named_modules() if q})
    return qnames + classes + [qnames[: len(qnames) // 2]]


@pytest.mark.parametrize(
    ("precision", "accum"), [("fp32", 1), ("bf16", 1), ("fp16", 1), ("bf16", 2)]
)
@pytest.mark.parametrize("model", sorted(CASES))
def test_replay_equals_the_measured_checkpointed_peak(model, precision, accum):
    recipe = memory_recipe(
        model, precision=precision, **{"train.accum_steps": accum}, **CASES[model]
    )
    session = ProfileSession(load_recipe(recipe))
    batch = session.recipe_batch_size
    session.step(Config(precision, (), batch), track=True)  # optimizer state now exists
    plain = session.step(Config(precision, (), batch), track=True).trace
    _, nograd = session.forward_pass(Config(precision, (), batch), flops=False)
    plain.natural_free = natural_frees(plain, nograd)  # as memory_profile does
    wrong = []
    for names in _names(session.model):
        names = names if isinstance(names, list) else [names]
        targets, missing = checkpoint_targets(session.model, names)
        assert not missing
        measured = replay(session.step(Config(precision, tuple(names), batch), track=True).trace)
        predicted = replay(plain, targets)
        peaks = {"step": (predicted.peak, measured.peak)}
        peaks |= {p: (predicted.phase_peaks[p], got) for p, got in measured.phase_peaks.items()}
        for what, (pred, got) in peaks.items():
            if abs(pred - got) > 0.005 * got:
                wrong.append((names, what, pred, got))
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


def test_a_short_last_batch_is_skipped_without_breaking_the_batch_fit():
    """40 samples in batches of 16 end with a batch of 8. It is skipped, and the profiled
    steps at two batch sizes still pair up event by event, so the fit is exact."""
    recipe = memory_recipe("Stack", **{"data.n": 40, "model.depth": 3})
    profile = gradoctor.memory_profile(recipe, batch_sizes="8,16,32", budget=BUDGET)
    assert profile.checks
    for check in profile.checks:
        if check.batch_size == 32:  # 40 samples make one batch of 32 and a short one
            continue
        assert check.status == "ok", check
        assert abs(check.predicted - check.measured) <= 64, check


def test_self_check_of_checkpointed_multihead_attention():
    """The self-check's measured steps run without saved-tensor hooks: with them, a
    recomputation would see ``query is key`` False and take another path than its forward
    (torch raises CheckpointError)."""
    recipe = memory_recipe("Attn", **{"train.checkpoint": ["mha"]})
    profile = gradoctor.memory_profile(recipe, batch_sizes="8,16", budget=BUDGET)
    rows = [c for c in profile.checks if c.checkpoint == "recipe"]
    assert rows
    for check in rows:
        assert check.status == "ok", check
        assert abs(check.error_pct) <= 0.5, check
