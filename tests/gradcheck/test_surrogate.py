"""Surrogate gradients (straight-through estimators): ``Case(..., surrogate=fn)``.

Truth: each STE's backward is written from its surrogate's textbook derivative (1 for the
identity, ``1[|x| <= 1]`` for hardtanh, ``s (1 - s)`` for sigmoid), so the declared cases are
right by construction; the planted bugs (a backward scaled by 2, a wrong surrogate) have their
wrong entries computed here from the inputs, independently of gradoctor. Every declared case
is also run undeclared, where it must fail: the surrogate is what makes it pass.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradoctor
from gradoctor.errors import UsageError
from gradoctor.gradcheck.api import run_case
from gradoctor.gradcheck.discovery import discover
from gradoctor.gradcheck.result import FAIL, PASS

SAMPLE = Path(__file__).resolve().parents[2] / "sample_models" / "surrogate_gradients.py"


@pytest.fixture(scope="module")
def sample_cases():
    return {c.name: c for c in discover(SAMPLE)}


def identity(x):
    return x


class StochasticBinary(torch.autograd.Function):
    """bernoulli(sigmoid(x)) forward (sampling); backward of sigmoid: g s (1 - s), with s
    recomputed from x so that the backward is itself differentiable."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.bernoulli(torch.sigmoid(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return g * s * (1 - s)


class RoundFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        return torch.round(w)

    @staticmethod
    def backward(ctx, g):
        return g


class QuantisedActivations(nn.Module):
    """round(linear(x)), the activations quantised with the identity STE; surrogate
    linear(x), so d/dx = W and d/dW = x."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return RoundFn.apply(self.linear(x))


def quantised_activations_surrogate(module, x):
    return module.linear(x)


def _members():
    torch.manual_seed(0)
    return {
        "sampling (sigmoid)": gradoctor.Case(
            "StochasticBinary", StochasticBinary, (torch.randn(4, 5),), surrogate=torch.sigmoid
        ),
        "module weight (identity)": gradoctor.Case(
            "QuantisedActivations",
            QuantisedActivations(),
            (torch.randn(5, 4),),
            surrogate=quantised_activations_surrogate,
        ),
    }


@pytest.mark.parametrize("name", ["RoundClippedSTE", "SignSTE"])
def test_declared_sample_stes_pass_and_fail_undeclared(sample_cases, name):
    case = sample_cases[name]
    result = run_case(case)
    assert result.passed, result.failure_text()
    first = result.check("first order")
    assert first.status == PASS and "surrogate" in first.message
    undeclared = run_case(dataclasses.replace(case, surrogate=None))
    assert undeclared.check("first order").status == FAIL


@pytest.mark.parametrize("member", ["sampling (sigmoid)", "module weight (identity)"])
def test_more_declared_stes_pass_and_fail_undeclared(member):
    case = _members()[member]
    result = run_case(case)
    assert result.passed, result.failure_text()
    assert run_case(dataclasses.replace(case, surrogate=None)).check("first order").status == FAIL


def test_doubled_clipped_ste_is_located_analytic_2_numeric_1(sample_cases):
    case = sample_cases["RoundClippedSTEDoubled"]
    first = run_case(case).check("first order")
    assert first.status == FAIL
    assert "constant factor (analytic = 2 x numeric)" in (first.pattern or "")
    x = case.inputs[0].double()
    inside = {tuple(i) for i in torch.nonzero(x.abs() <= 1).tolist()}
    assert inside  # the example has entries inside [-1, 1]
    for m in first.mismatches:
        assert m.input_index == m.output_index and tuple(m.input_index) in inside
        assert m.analytic == pytest.approx(2.0) and m.numeric == pytest.approx(1.0, abs=1e-6)
    assert "(analytic = 2" not in (run_case(sample_cases["RoundClippedSTE"]).failure_text())


def test_wrong_surrogate_fails_where_the_derivatives_differ():
    """The identity STE declared with hardtanh: backward 1, hardtanh' 0 outside [-1, 1]."""
    torch.manual_seed(1)
    x = 2.0 * torch.randn(3, 4)
    case = gradoctor.Case("IdentitySTE", RoundFn, (x,), surrogate=F.hardtanh)
    first = run_case(case).check("first order")
    assert first.status == FAIL
    outside = {tuple(i) for i in torch.nonzero(x.abs() > 1).tolist()}
    assert first.mismatches
    for m in first.mismatches:
        assert tuple(m.input_index) in outside
        assert (m.analytic, m.numeric) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-9))


@pytest.mark.parametrize(
    "case_name", ["RoundSTEUndeclared", "RoundClippedSTE", "SignSTE", "sampling", "module"]
)
def test_undeclared_ste_fails_with_a_hint_naming_surrogate(sample_cases, case_name):
    members = _members()
    if case_name == "sampling":
        case = dataclasses.replace(members["sampling (sigmoid)"], surrogate=None)
    elif case_name == "module":
        case = dataclasses.replace(members["module weight (identity)"], surrogate=None)
    else:
        case = dataclasses.replace(sample_cases[case_name], surrogate=None)
    first = run_case(case).check("first order")
    assert first.status == FAIL
    assert "surrogate" in (first.pattern or ""), first.pattern


class _IgnoresX(torch.autograd.Function):
    """Output 0 whatever x, backward g: a spurious gradient, but no STE (nothing moves)."""

    @staticmethod
    def forward(ctx, x):
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, g):
        return g


def test_no_ste_hint_for_a_forward_that_never_moves():
    first = run_case(gradoctor.Case("IgnoresX", _IgnoresX, (torch.randn(3, 4),))).check(
        "first order"
    )
    assert first.status == FAIL
    assert "surrogate" not in (first.pattern or "")
    assert "numeric gradient is zero" in (first.pattern or "")


def test_surrogate_through_check_grads_and_class_attribute(sample_cases):
    assert sample_cases["RoundClippedSTE"].surrogate is F.hardtanh
    result = gradoctor.check_grads(RoundFn, (torch.randn(3, 4),), surrogate=identity)
    assert result.passed, result.failure_text()


@pytest.mark.parametrize(
    "surrogate, message",
    [
        (lambda x: x.sum(), "shapes"),
        (lambda x, y: x, "raised TypeError"),
        (3, "not callable"),
    ],
)
def test_unusable_surrogate_is_a_usage_error(surrogate, message):
    case = gradoctor.Case("bad", RoundFn, (torch.randn(3, 4),), surrogate=surrogate)
    with pytest.raises(UsageError, match=message):
        run_case(case)
