"""Full and probed comparisons, bisection and kinks, against functions with known Jacobians."""

from __future__ import annotations

import math

import pytest
import torch

from gradoctor.gradcheck.case import Case
from gradoctor.gradcheck.jacobian import compare
from gradoctor.gradcheck.target import FlatFunction, Target


def flat(fn, *inputs, **options) -> FlatFunction:
    return FlatFunction(Target(Case("t", fn, inputs, **options)))


class WrongAt(torch.autograd.Function):
    """sin(x) with d/dx wrong by ``factor`` at one flat index (or at x == 0 for ``at_zero``)."""

    index, factor = 0, 1.0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        g = (grad * x.cos()).clone()
        g.view(-1)[WrongAt.index] *= WrongAt.factor
        return g


@pytest.fixture
def wrong_at():
    yield WrongAt
    WrongAt.index, WrongAt.factor = 0, 1.0


def test_full_mode_passes_a_correct_function_tightly():
    x = torch.randn(3, 4, dtype=torch.float64)
    comp = compare(flat(torch.tanh, x), mode="full")
    assert comp.ok and comp.mode == "full" and comp.max_rel_error < 1e-7


def test_full_mode_locates_every_wrong_entry(wrong_at):
    wrong_at.index, wrong_at.factor = 5, 3.0
    x = torch.randn(3, 4)
    comp = compare(flat(wrong_at, x), mode="full")
    assert not comp.ok
    assert [(m.input_index, m.output_index) for m in comp.mismatches] == [((1, 1), (1, 1))]
    assert comp.mismatches[0].numeric == pytest.approx(math.cos(float(x[1, 1])), rel=1e-7)


@pytest.mark.parametrize("n", [1000, 10_000])
def test_single_wrong_entry_found_by_probes(wrong_at, n):
    """Located exactly; how fast is measured by bench/checkgrads_speed.py, not here."""
    wrong_at.index, wrong_at.factor = n - 7, 1.01  # a 1% error in one of n entries
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    comp = compare(flat(wrong_at, x), mode="probes")
    assert [m.input_index for m in comp.mismatches] == [(n - 7,)]
    assert comp.mismatches[0].output_index == (n - 7,)
    true = math.cos(float(x[n - 7]))
    assert comp.mismatches[0].analytic == pytest.approx(1.01 * true, rel=1e-12)


def test_probe_sensitivity_is_honest(wrong_at):
    """An error far below the stated sensitivity passes; one above it is found."""
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    wrong_at.index = 123
    wrong_at.factor = 1.0
    sens = compare(flat(wrong_at, x), mode="probes").sensitivity
    cos = abs(math.cos(float(x[123])))
    wrong_at.factor = 1 + 0.01 * sens / cos
    assert compare(flat(wrong_at, x), mode="probes").ok
    wrong_at.factor = 1 + 4 * sens / cos
    assert not compare(flat(wrong_at, x), mode="probes").ok


def test_relu_kinks_are_notes_not_failures():
    x = torch.tensor([[0.0, 1.0, -1.0, 0.0], [2.0, 0.0, 0.0, 3.0]])
    comp = compare(flat(torch.relu, x))
    assert comp.ok and len(comp.kinks) == 4


def test_relu_kinks_in_probe_mode():
    x = torch.randn(60, 60).clamp(min=0)  # about half the entries exactly 0
    comp = compare(flat(torch.relu, x), mode="probes")
    assert comp.ok and comp.kinks


class BadSubgradient(torch.autograd.Function):
    """relu whose gradient at exactly 0 is 5: outside the one-sided slopes [0, 1]."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.where(x == 0, torch.full_like(x, 5.0), (x > 0).to(x.dtype))


def test_gradient_outside_one_sided_slopes_at_a_kink_fails():
    x = torch.tensor([0.0, 1.0, -2.0])
    comp = compare(flat(BadSubgradient, x))
    assert not comp.ok
    assert comp.mismatches[0].input_index == (0,) and comp.mismatches[0].analytic == 5.0


class WrongOffKink(torch.autograd.Function):
    """|x| whose gradient is wrong (x2) for x > 0.5 only: a kink at 0 must not hide it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.abs()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x.sign() * torch.where(x > 0.5, 2.0, 1.0)


def test_kink_does_not_mask_a_real_bug():
    x = torch.tensor([0.0, 0.7, -0.3])
    comp = compare(flat(WrongOffKink, x))
    assert not comp.ok
    assert [m.input_index for m in comp.mismatches] == [(1,)]


def test_nonfinite_outputs_are_not_compared():
    comp = compare(flat(torch.log, torch.tensor([-1.0, 2.0])))
    assert comp.ok and comp.mode == "non-finite"
