"""False positives on a real corpus: a CI-sized sample of PyTorch's OpInfo database.

Every op here has correct gradients; gradoctor must not fail them. The full sweep is
``bench/opdb_sweep.py``. Needs ``expecttest`` (torch's internal test utilities import it).
"""

from __future__ import annotations

import pytest

pytest.importorskip("expecttest")

from gradoctor.gradcheck.api import run_case  # noqa: E402
from gradoctor.gradcheck.opdb import cases_for, differentiable_ops, skip_reason  # noqa: E402

# A fixed, varied sample: elementwise, reductions, linear algebra, indexing, nn.functional.
SAMPLE = [
    "abs",
    "add",
    "addmm",
    "amax",
    "atan2",
    "cumsum",
    "clamp",
    "cdist",
    "cat",
    "div",
    "exp",
    "gather",
    "index_select",
    "lgamma",
    "linalg.det",
    "linalg.eigh",
    "log_softmax",
    "logsumexp",
    "max",
    "mean",
    "nn.functional.conv2d",
    "nn.functional.gelu",
    "nn.functional.layer_norm",
    "nn.functional.softplus",
    "norm",
    "pow",
    "prod",
    "sigmoid",
    "sort",
    "sqrt",
    "std",
    "tanh",
    "topk",
    "where",
]


@pytest.fixture(scope="module")
def ops():
    by_name = {}
    for op in differentiable_ops():
        by_name.setdefault(op.name, op)
    return by_name


@pytest.mark.parametrize("name", SAMPLE)
def test_opinfo_op_passes(ops, name):
    op = ops[name]
    assert skip_reason(op) is None
    case = next(iter(cases_for(op, max_samples=1)))
    result = run_case(case, fast=True)
    assert result.passed, result.failure_text()
