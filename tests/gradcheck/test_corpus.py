"""The planted-bug corpus (each caught, by the right check, with the right pattern) and
the correct layers that trip naive checkers (each passes). Layers: tests/assets/gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from gradoctor.gradcheck.api import run_case

# case -> (check that must fail, substring of its pattern, checks that must still pass)
EXPECTED = {
    "DoubledSin": ("first order", "constant factor (analytic = 2 x numeric)", []),
    "FlippedExp": ("first order", "sign flipped", []),
    "ScaleMissingGrad": ("first order", "zero (gradient missing)", []),
    "SquareMatmul": ("first order", "transposed", []),
    "FirstSampleWeightGrad": (
        "batch size 3",
        "only at batch size > 1",
        ["first order", "batch size 1"],
    ),
    "LeakyBackward": ("batch independence", "only off-diagonal batch blocks wrong", []),
    "NeedsInputGradOrder": (
        "requires_grad subsets",
        "only when some inputs do not require grad",
        ["first order"],
    ),
    "SoftplusBadBranch": ("input ranges", "only at large magnitudes", ["first order"]),
    "DetachedCube": ("double backward", "only in double backward", ["first order"]),
    "AssumesContiguousGrad": (
        "non-contiguous grad_output",
        "only with non-contiguous grad_output",
        ["first order", "non-contiguous inputs"],
    ),
    "StashedOnCtx": ("in-place after forward", "input stashed on ctx", ["first order"]),
    "CountingBackward": ("repeated backward", "nondeterministic backward", ["kinks & randomness"]),
    "NaiveSoftmax": (
        "precision",
        "numerically unstable in low precision",
        ["first order", "input ranges"],
    ),
    "RegeneratedDropout": ("kinks & randomness", "backward regenerates randomness", []),
    "Float32Grad": ("gradient metadata", "gradient metadata mismatch", ["first order"]),
    "CentersOverBatch": ("batch independence", "forward mixes samples", ["first order"]),
    "ReadsAsContiguous": (
        "non-contiguous inputs",
        "only with non-contiguous inputs",
        ["first order"],
    ),
    "OneWrongEntry": ("first order", "isolated: 1 wrong entry", []),
}


@pytest.fixture(scope="module")
def buggy_results(buggy_cases):
    return {name: run_case(case) for name, case in buggy_cases.items()}


def test_every_planted_bug_is_in_the_table(buggy_cases):
    assert set(buggy_cases) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_planted_bug_caught_with_pattern(buggy_results, name):
    check, pattern, still_pass = EXPECTED[name]
    result = buggy_results[name]
    assert not result.passed
    failed = result.check(check)
    assert failed.status == "fail", (check, failed.message)
    assert failed.pattern and pattern in failed.pattern, failed.pattern
    for other in still_pass:
        assert result.check(other).status != "fail", (other, result.check(other).message)


def test_doubled_sin_located_against_analytic_values(buggy_cases, buggy_results):
    (x,) = buggy_cases["DoubledSin"].inputs
    worst = buggy_results["DoubledSin"].check("first order").mismatches[0]
    assert worst.input == "x" and worst.output_index == worst.input_index
    true = math.cos(float(x[worst.input_index]))
    assert worst.numeric == pytest.approx(true, rel=1e-7)
    assert worst.analytic == pytest.approx(2 * true, rel=1e-12)


def test_single_wrong_entry_among_2000_located_exactly(buggy_cases, buggy_results):
    (x,) = buggy_cases["OneWrongEntry"].inputs
    first = buggy_results["OneWrongEntry"].check("first order")
    assert [(m.input_index, m.output_index) for m in first.mismatches] == [((17, 33), (17, 33))]
    m = first.mismatches[0]
    assert m.numeric == pytest.approx(math.cos(float(x[17, 33])), rel=1e-7)
    assert m.analytic == pytest.approx(1.5 * math.cos(float(x[17, 33])), rel=1e-12)


def test_missing_grad_names_the_parameter(buggy_results):
    worst = buggy_results["ScaleMissingGrad"].check("first order").mismatches[0]
    assert worst.input == "w" and worst.analytic == 0.0 and worst.numeric != 0.0


def test_naive_softmax_names_exp_and_the_fix(buggy_results):
    message = buggy_results["NaiveSoftmax"].check("precision").message
    assert "torch.exp" in message and "logsumexp" in message


def test_user_objects_left_unchanged(buggy_cases):
    case = buggy_cases["SquareMatmul"]
    before = [t.clone() for t in case.inputs]
    run_case(case)
    for a, b in zip(case.inputs, before):
        assert a.dtype == torch.float32 and torch.equal(a, b)


CORRECT_NOTES = {
    "ReLUAtZero": ("kinks & randomness", "non-differentiable"),
    "MaxWithTies": None,
    "MaskedDropout": ("kinks & randomness", "random"),
    "DropoutMLP": ("kinks & randomness", "random"),
    "StableSoftplus": None,
    "BatchNormTrain": ("batch independence", "BatchNorm1d"),
    "CubeOnce": ("double backward", "once_differentiable"),
    "ScaledTanh": None,
    "ConvBlock": None,
    "log_softmax": None,
    "embedding": None,
}


@pytest.mark.parametrize("name", sorted(CORRECT_NOTES))
def test_correct_layer_passes(correct_cases, name):
    result = run_case(correct_cases[name])
    assert result.passed, result.failure_text()
    note = CORRECT_NOTES[name]
    if note:
        check = result.check(note[0])
        assert check.status == "note" and note[1] in check.message, check.message
    # the float64 first-order comparison is tight on all of them
    assert result.check("first order").max_rel_error < 1e-4


def test_correct_module_params_untouched(correct_cases):
    module = correct_cases["ConvBlock"].fn
    before = {k: v.clone() for k, v in module.state_dict().items()}
    run_case(correct_cases["ConvBlock"])
    for k, v in module.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k])
