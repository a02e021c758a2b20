"""Saved-for-backward bytes per module against closed forms and an independent count (walking
the autograd graph's ``_saved_*`` attributes), and the tracker leaving nothing behind."""

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from gradoctor.memory.model import module_stats
from gradoctor.memory.tracking import StepTracker, storage_key
from gradoctor.training.activation_checkpointing import apply_checkpointing
from tests.assets.memory.models import C, D, H, Stack, TwoLayer, W

B = 16


def _forward_backward(model, x, y):
    tracker = StepTracker(model, None, torch.device("cpu"))
    with tracker.tracking():
        with tracker.in_phase("forward"):
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out, y)
        graph_count = _saved_by_graph(out, model)
        with tracker.in_phase("backward"):
            loss.backward()
    return tracker.finish(set(), set()), graph_count


def _saved_by_graph(out: torch.Tensor, model: torch.nn.Module) -> int:
    """Independent truth: distinct non-parameter storages saved by the graph that produced
    ``out`` (read through autograd's ``_saved_*`` attributes, no hooks)."""
    params = {storage_key(p) for p in model.parameters()}
    seen, stack, total, nodes = set(), [out.grad_fn], 0, set()
    while stack:
        node = stack.pop()
        if node is None or node in nodes:
            continue
        nodes.add(node)
        for attr in dir(node):
            if attr.startswith("_saved_"):
                value = getattr(node, attr)
                if isinstance(value, torch.Tensor):
                    key = storage_key(value)
                    if key not in params and key not in seen:
                        seen.add(key)
                        total += value.untyped_storage().nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return total


def _data(depth_width=D):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, depth_width, generator=g), torch.randint(0, C, (B,), generator=g)


def test_two_layer_saved_bytes_match_the_closed_form():
    model = TwoLayer()
    trace, graph_count = _forward_backward(model, *_data())
    stats = {s.qname: s for s in module_stats(trace)}
    assert stats["fc1"].saved == 4 * B * D  # its input x; weight.t() is a parameter view
    assert stats["act"].saved == 4 * B * H  # tanh's output
    assert stats["fc2"].saved == 4 * B * H  # the same storage, saved again
    assert stats[""].saved_total == 4 * B * (D + H) == graph_count
    # checkpointing fc2 frees nothing (its input h is also saved by act, outside it)
    assert stats["fc2"].drop == 0
    assert stats["act"].drop == 0  # h is saved by fc2 too
    assert stats[""].drop == 4 * B * H  # x is the root's input, h is created inside


def test_stack_total_matches_the_autograd_graph():
    model = Stack(depth=3)
    trace, graph_count = _forward_backward(model, *_data())
    stats = {s.qname: s for s in module_stats(trace)}
    assert stats[""].saved_total == graph_count
    for i in range(3):
        block = stats[f"blocks.{i}"]
        assert block.saved_total == 2 * 4 * B * W  # fc's input x and tanh's output
        assert block.drop == 4 * B * W  # only the tanh output is created inside the block


def test_checkpointed_region_shows_only_its_inputs_to_outer_hooks():
    """Non-reentrant checkpointing saves its inputs; what its ops save stays inside."""
    model = Stack(depth=2)
    undo = apply_checkpointing(model, ["Block"])
    try:
        trace, _ = _forward_backward(model, *_data())
    finally:
        undo()
    stats = {s.qname: s for s in module_stats(trace)}
    for i in range(2):
        assert stats[f"blocks.{i}"].saved_total == 4 * B * W  # its input only


def test_no_hooks_or_modes_left_behind():
    model = Stack(depth=2)
    _forward_backward(model, *_data())
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
    assert _get_current_dispatch_mode() is None
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
