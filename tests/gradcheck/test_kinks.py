"""One kink rule in every comparison against finite differences.

Correct piecewise-linear layers evaluated exactly at their kinks (and a hard gate exactly at
its jump) must pass every check, whichever context (double backward, requires_grad subsets,
batch sizes, non-contiguous inputs / grad_output, input ranges) compares them; wrong layers at
the same points must still fail and be located. Truth: each correct layer is a torch builtin
(or the textbook ReLU), so its gradient is right almost everywhere by construction; each wrong
layer's error is planted, so the located values are checked against the formula.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradoctor.gradcheck.api import run_case
from gradoctor.gradcheck.case import Case
from gradoctor.gradcheck.jacobian import compare
from gradoctor.gradcheck.result import FAIL, CaseResult
from gradoctor.gradcheck.target import FlatFunction, Target

# The checks that compare backward against finite differences.
COMPARING = (
    "first order",
    "double backward",
    "batch size 1",
    "batch size 4",
    "requires_grad subsets",
    "non-contiguous inputs",
    "non-contiguous grad_output",
    "input ranges",
)


class ReLUFn(torch.autograd.Function):
    """relu; d/dx = 1[x > 0] (the subgradient 0 at the kink)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class ScaledBy(nn.Module):
    """``f(*inputs) * w`` with a parameter ``w`` (6,): gives requires_grad subsets two or
    more tensors to vary."""

    def __init__(self, f):
        super().__init__()
        self.f = f
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, 6))

    def forward(self, *inputs):
        return self.f(*inputs) * self.w


def at(points: list[float], gen: torch.Generator, count: int = 3) -> torch.Tensor:
    """(4, 6) normal draws with ``count`` entries set exactly to ``points`` (in turn)."""
    x = torch.randn(4, 6, generator=gen)
    where = torch.randperm(24, generator=gen)[:count]
    x.view(-1)[where] = torch.tensor(points).repeat(count)[:count]
    return x


def _ties(gen):
    a = torch.randn(4, 6, generator=gen)
    return (a, a.clone())


# name -> (callable, inputs from a generator)
KINK_LAYERS = {
    "abs at 0": (lambda: ScaledBy(torch.abs), lambda g: (at([0.0], g),)),
    "leaky_relu at 0": (
        lambda: ScaledBy(lambda x: F.leaky_relu(x, 0.1)),
        lambda g: (at([0.0], g),),
    ),
    "hardtanh at +-1": (lambda: ScaledBy(F.hardtanh), lambda g: (at([1.0, -1.0], g),)),
    "clamp at its bounds": (
        lambda: ScaledBy(lambda x: x.clamp(-0.5, 0.5)),
        lambda g: (at([0.5, -0.5], g),),
    ),
    "maximum with ties": (lambda: ScaledBy(torch.maximum), _ties),
    "custom ReLU Function": (lambda: ReLUFn, lambda g: (at([0.0], g),)),
    "custom ReLU in a module": (lambda: ScaledBy(ReLUFn.apply), lambda g: (at([0.0], g),)),
    # A jump, not a kink: d/dx is 0 almost everywhere and does not exist at x == 0.
    "hard gate at 0": (
        lambda: ScaledBy(lambda x, s: s * (x > 0).to(s.dtype)),
        lambda g: (at([0.0], g), torch.randn(4, 6, generator=g)),
    ),
}
DRAWS = range(6)


def assert_mismatches_differ(result: CaseResult) -> None:
    """No located entry may show equal analytic and numeric values."""
    for check in result.failures:
        for m in check.mismatches:
            a, n = m.formatted()
            assert a != n, (check.name, m.describe())


def kink_case(name: str, draw: int) -> Case:
    make, inputs = KINK_LAYERS[name]
    return Case(name, make(), inputs(torch.Generator().manual_seed(draw)))


@pytest.mark.parametrize("draw", DRAWS)
@pytest.mark.parametrize("name", sorted(KINK_LAYERS))
def test_correct_layer_at_its_kinks_passes_every_check(name, draw):
    result = run_case(kink_case(name, draw), seed=draw)
    assert_mismatches_differ(result)
    assert result.passed, result.failure_text()
    names = {c.name for c in result.checks}
    assert set(COMPARING) <= names  # every comparing check ran (none silently absent)
    kinks = result.check("kinks & randomness")
    assert kinks.status == "note" and "non-differentiable" in kinks.message, kinks.message


class WrongReLU(torch.autograd.Function):
    """relu whose backward is ``2 * g * 1[x >= 0]``: wrong (x2) for every x > 0, and its
    value 2 at the kink lies outside the one-sided slopes [0, 1]."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x >= 0) * 2


@pytest.mark.parametrize("draw", DRAWS)
def test_wrong_relu_at_kinks_fails_and_is_located(draw):
    (x,) = inputs = (at([0.0], torch.Generator().manual_seed(draw)),)
    result = run_case(Case("WrongReLU", WrongReLU, inputs), seed=draw)
    assert_mismatches_differ(result)
    # every comparison of the first derivative sees the x2 (not only the first order)
    names = ["first order", "non-contiguous inputs", "input ranges"]
    if bool((x[0] >= 0).any()):  # batch size 1 keeps sample 0 only: wrong where x >= 0
        names.append("batch size 1")
    for name in names:
        check = result.check(name)
        assert check.status == FAIL, (name, check.message)
        assert check.mismatches, name
    first = result.check("first order")
    assert "constant factor" not in (first.pattern or "") or "2 x numeric" in first.pattern
    for m in first.mismatches:
        value = float(x[m.input_index])
        assert m.output_index == m.input_index
        if value > 0:  # away from the kink: analytic 2, numeric 1
            assert m.analytic == pytest.approx(2.0) and m.numeric == pytest.approx(1.0, abs=1e-6)
        else:  # at the kink: 2 is outside [0, 1]; below it the gradient is right (0)
            assert value == 0.0 and m.analytic == pytest.approx(2.0)


class SquareAbsDetached(torch.autograd.Function):
    """x |x| (d/dx = 2|x|, d2/dx2 = 2 sign x: a kink of the backward at 0) whose backward
    detaches |x|: the double backward is missing everywhere, at the kink and off it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x.abs()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2 * x.abs().detach()


def test_wrong_double_backward_at_a_kink_still_fails_and_is_located():
    x = at([0.0], torch.Generator().manual_seed(5))
    result = run_case(Case("SquareAbsDetached", SquareAbsDetached, (x,)))
    assert_mismatches_differ(result)
    assert result.check("first order").status != FAIL
    second = result.check("double backward")
    assert second.status == FAIL and second.mismatches, second.message
    assert "only in double backward" in (second.pattern or "")
    for m in second.mismatches:  # analytic 0 (detached); numeric != 0
        assert m.analytic == 0.0 and abs(m.numeric) > 1e-3


def flat(fn, *inputs, **options) -> FlatFunction:
    return FlatFunction(Target(Case("t", fn, inputs, **options)))


@pytest.mark.parametrize("draw", range(6))
def test_probes_moving_elements_together_across_a_jump_is_not_a_mismatch(draw):
    """f(x, s) = s * 1[x > 0] at x == 0: moving x_k and s_k together changes the difference
    quotient by s's step (the jump's size moves), though along s alone it is exactly right.
    That interaction lives only at the non-differentiable point: it is a note and the
    comparison is redone just off it, never a located entry whose values agree."""
    gen = torch.Generator().manual_seed(draw)
    x = torch.randn(30, generator=gen)
    x[torch.randperm(30, generator=gen)[:3]] = 0.0
    s = torch.randn(30, generator=gen)
    comp = compare(flat(lambda a, b: b * (a > 0).to(b.dtype), x, s, batched=False), mode="probes")
    assert comp.ok, [m.describe() for m in comp.mismatches]
    assert comp.kinks
