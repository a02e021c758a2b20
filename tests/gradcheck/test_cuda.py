"""On a GPU the precision check also runs on CUDA (run by bench/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch

import gradoctor
from gradoctor.gradcheck.api import run_case
from gradoctor.gradcheck.discovery import discover

from .conftest import BUGGY

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_precision_runs_on_cuda_for_a_correct_module():
    result = gradoctor.check_grads(torch.nn.Linear(8, 4), (torch.randn(4, 8),))
    assert result.passed, result.failure_text()
    message = result.check("precision").message
    assert "float32 cuda" in message and "bfloat16 cuda" in message


def test_naive_softmax_unstable_on_cuda_too():
    (case,) = discover(BUGGY, names=["NaiveSoftmax"])
    result = run_case(case)
    check = result.check("precision")
    assert check.status == "fail" and "torch.exp" in check.message
    assert "cuda" in check.message or "cpu" in check.message
