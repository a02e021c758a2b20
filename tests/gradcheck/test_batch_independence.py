"""Batch independence at large batch sizes: a bounded number of probed samples, memory O(n),
and leaks that touch every sample still found."""

from __future__ import annotations

import pytest
import torch

import gradoctor
from gradoctor.gradcheck.checks.batch_independence import MAX_PROBED, probed_samples


def _check(result):
    (check,) = [c for c in result.checks if c.name == "batch independence"]
    return check


def test_a_million_elements_are_probed_not_enumerated():
    """1000 x 1000 elementwise: 8 probed samples, not 1000 (the full check needed O(B^2 F)
    memory and was killed at 24 GB)."""
    result = gradoctor.check_grads(lambda x: x.sin(), (torch.randn(1000, 1000),))
    check = _check(result)
    assert result.passed and check.status == "pass"
    assert f"probed {MAX_PROBED} of 1000 samples" in check.message


@pytest.mark.parametrize(
    ("fn", "says"),
    [
        (lambda x: x - 1e-3 * x.mean(0, keepdim=True), "forward mixes samples"),
        (lambda x: x + 1e-2 * x.roll(1, 0), "forward mixes samples"),
    ],
    ids=["batch-mean", "roll"],
)
def test_a_leak_is_found_at_a_large_batch(fn, says):
    result = gradoctor.check_grads(fn, (torch.randn(64, 5),))
    check = _check(result)
    assert check.status == "fail" and says in check.message


def test_the_probed_samples_include_both_ends_and_stay_bounded():
    gen = torch.Generator().manual_seed(0)
    assert probed_samples(5, gen) == [0, 1, 2, 3, 4]
    picked = probed_samples(1000, gen)
    assert len(picked) == MAX_PROBED and picked[0] == 0 and picked[-1] == 999
    assert len(set(picked)) == MAX_PROBED
