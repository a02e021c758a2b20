"""``gradoctor.check_grads`` / ``assert_grads_correct`` and the JSON shape of results."""

from __future__ import annotations

import json

import pytest
import torch

import gradoctor
from gradoctor.gradcheck import GradCheckFailed


def test_a_case_through_the_top_level_api():
    """A ``gradoctor.Case`` (what a layer file's ``gradoctor_cases()`` returns) passed to the
    top-level ``check_grads`` and ``assert_grads_correct``: the case's name labels the result."""
    case = gradoctor.Case("sine", torch.sin, (torch.randn(3, dtype=torch.float64),), batched=False)
    result = gradoctor.check_grads(case)
    assert result.passed and result.name == "sine" and result.check("first order")
    assert gradoctor.assert_grads_correct(case).name == "sine"


def test_check_grads_on_a_module_and_a_function():
    result = gradoctor.check_grads(torch.nn.Linear(4, 3), (torch.randn(5, 4),))
    assert result.passed
    names = [c.name for c in result.checks]
    for expected in (
        "first order",
        "double backward",
        "batch size 1",
        "batch size 5",
        "requires_grad subsets",
        "non-contiguous inputs",
        "non-contiguous grad_output",
        "in-place after forward",
        "repeated backward",
        "batch independence",
        "input ranges",
        "precision",
        "kinks & randomness",
        "gradient metadata",
    ):
        assert expected in names
    assert gradoctor.check_grads(torch.sin, torch.randn(3), batched=False).passed


class Halved(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, 0.5 * (g * x).sum(0)


def test_assert_grads_correct_raises_with_location():
    x, w = torch.randn(3, 2), torch.randn(2)
    with pytest.raises(AssertionError) as err:
        gradoctor.assert_grads_correct(Halved, (x, w))
    assert isinstance(err.value, GradCheckFailed)
    text = str(err.value)
    assert "first order" in text and "constant factor (analytic = 0.5 x numeric)" in text
    assert "/ d w[" in text
    worst = err.value.result.check("first order").mismatches[0]
    i, j = worst.output_index
    assert worst.input_index == (j,)
    assert worst.numeric == pytest.approx(float(x[i, j]), rel=1e-7)
    assert worst.analytic == pytest.approx(0.5 * float(x[i, j]), rel=1e-12)


def test_to_dict_is_json_and_complete():
    result = gradoctor.check_grads(Halved, (torch.randn(3, 2), torch.randn(2)))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["status"] == "fail"
    first = next(c for c in data["checks"] if c["name"] == "first order")
    assert first["status"] == "fail" and first["locations"]
    loc = first["locations"][0]
    assert {"input", "input_index", "output", "output_index", "analytic", "numeric"} <= set(loc)


def test_inputs_required():
    with pytest.raises(gradoctor.UsageError):
        gradoctor.check_grads(torch.sin)


@pytest.mark.parametrize(
    ("fn", "inputs", "says"),
    [
        (lambda i: i * 2, (torch.arange(4),), "no floating-point input or parameter"),
        (lambda x: float(x.detach().sum()), (torch.randn(4),), "returns no floating-point tensor"),
        (lambda x: (x > 0).long(), (torch.randn(4),), "returns no floating-point tensor"),
    ],
    ids=["integer-inputs", "python-number", "integer-output"],
)
def test_nothing_to_differentiate_is_a_usage_error_not_a_pass(fn, inputs, says):
    with pytest.raises(gradoctor.UsageError) as err:
        gradoctor.check_grads(fn, inputs)
    assert says in str(err.value) and err.value.exit_code == 2
