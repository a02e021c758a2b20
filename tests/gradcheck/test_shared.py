"""The machinery the checks share for speed: the in-place finite-difference sweep, the module
copies shared by sibling Targets, the cheap RNG seeding. Each against independent truth."""

from __future__ import annotations

import torch

from gradoctor.gradcheck.api import run_case
from gradoctor.gradcheck.case import Case
from gradoctor.gradcheck.jacobian import _numeric_jacobian, step_size
from gradoctor.gradcheck.target import FlatFunction, Target, manual_seed


def flat(fn, *inputs, **options) -> FlatFunction:
    return FlatFunction(Target(Case("t", fn, inputs, **options)))


def test_sweep_jacobian_of_a_linear_layer_is_its_weight_and_input():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(2, 5)
    fn = flat(layer, x)
    jn = _numeric_jacobian(fn, fn.x0, step_size(fn.x0))
    w, xd = layer.weight.detach().double(), x.double()
    # out[b, i] = sum_k x[b, k] w[i, k] + bias[i]; columns: x (2x5), weight (3x5), bias (3)
    expected = torch.zeros(6, 10 + 15 + 3, dtype=torch.float64)
    for b in range(2):
        for i in range(3):
            row = b * 3 + i
            expected[row, b * 5 : (b + 1) * 5] = w[i]
            expected[row, 10 + i * 5 : 10 + (i + 1) * 5] = xd[b]
            expected[row, 25 + i] = 1.0
    torch.testing.assert_close(jn, expected, rtol=1e-8, atol=1e-8)


def test_sweep_copies_outputs_that_alias_the_inputs():
    """An identity (or a view of an input) returns the very storage the sweep edits in
    place: each evaluation must be copied before the next edit, or the Jacobian is wrong."""
    x = torch.randn(6)
    for f in (lambda t: t, lambda t: t.view(2, 3), lambda t: t[1:]):
        fn = flat(f, x, batched=False)
        jn = _numeric_jacobian(fn, fn.x0, step_size(fn.x0))
        expected = torch.eye(6, dtype=torch.float64)[-fn.m :]
        torch.testing.assert_close(jn, expected, rtol=1e-8, atol=1e-8)


def test_sweep_leaves_the_point_unchanged_and_bumps_versions():
    seen: list[int] = []

    def f(t):
        seen.append(t._version)
        return t.sin()

    x = torch.randn(4)
    fn = flat(f, x, batched=False)
    x0 = fn.x0.clone()
    seen.clear()
    jn = _numeric_jacobian(fn, fn.x0, step_size(fn.x0))
    assert torch.equal(fn.x0, x0)
    # every forward sees a tensor modified since the previous one, as with tensor writes
    assert len(seen) == 8 and all(a < b for a, b in zip(seen, seen[1:]))
    torch.testing.assert_close(jn, torch.diag(x.double().cos()), rtol=1e-8, atol=1e-8)


def test_sweep_matches_value_per_column_exactly():
    """The sweep computes the same central differences as two ``value`` calls per column."""
    torch.manual_seed(1)
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    fn = flat(lambda p, q: (p @ q).tanh(), a, b, batched=False)
    h = step_size(fn.x0)
    jn = _numeric_jacobian(fn, fn.x0, h)
    for j in range(fn.n):
        e = torch.zeros(fn.n, dtype=torch.float64)
        e[j] = h
        col = (fn.value(fn.x0 + e) - fn.value(fn.x0 - e)) / (2 * h)
        assert torch.equal(jn[:, j], col)


def test_sibling_targets_share_a_module_copy_without_sharing_values():
    torch.manual_seed(2)
    layer = torch.nn.Linear(4, 2)
    case = Case("lin", layer, (torch.randn(3, 4),))
    ref = Target(case)
    small = Target(case, inputs=(torch.randn(1, 4),), copies=ref.copies)
    low = Target(case, dtype=torch.float32, copies=ref.copies)
    assert small.module is ref.module and low.module is not ref.module
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    moved = [v + 1.0 for v in small.values]  # x + 1, w + 1, b + 1
    with torch.no_grad():
        (out_small,) = small.call(moved)
        (out_ref,) = ref.call(ref.values)
    x1 = small.args[0]
    torch.testing.assert_close(out_small, (x1 + 1) @ (w + 1).T + (b + 1))
    torch.testing.assert_close(out_ref, ref.args[0] @ w.T + b)  # not small's values
    assert ref.values[1].dtype == torch.float64 and torch.equal(ref.values[1], w)
    assert layer.weight.dtype == torch.float32  # the user's module is untouched


def test_shared_copy_gives_each_call_fresh_buffers():
    """A train-mode BatchNorm updates its running stats in place: sharing the copy must not
    carry one Target's updates into a sibling's calls."""
    torch.manual_seed(3)
    bn = torch.nn.BatchNorm1d(3)
    case = Case("bn", bn, (torch.randn(5, 3),), batch_mixing=True)
    ref = Target(case)
    sibling = Target(case, inputs=(torch.randn(4, 3) * 10,), copies=ref.copies)
    with torch.no_grad():
        for _ in range(3):
            sibling.call(sibling.values)
        ref.call(ref.values)
    running = dict(ref.module.named_buffers())["running_mean"]
    x = ref.args[0]
    torch.testing.assert_close(running, 0.1 * x.mean(0))  # one update from zero, not four
    assert torch.equal(bn.running_mean, torch.zeros(3))


def test_cpu_seeding_draws_like_torch_manual_seed():
    torch.manual_seed(11)
    a = torch.rand(5)
    manual_seed(11)
    assert torch.equal(torch.rand(5), a)


def test_random_module_checked_the_same_with_shared_copies():
    """Dropout in train mode: random, replayed per evaluation, correct gradients."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.3))
    result = run_case(Case("drop", net, (torch.randn(3, 4),)))
    assert result.passed, result.failure_text()
    assert "random" in result.check("kinks & randomness").message
