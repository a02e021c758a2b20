"""The scipy operator: preconditioning, diagonal blocks, HVP counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradoctor.errors import UsageError
from gradoctor.hessian.functional import FunctionalLoss, ParamLayout
from gradoctor.hessian.hvp import HessianVectorProduct
from gradoctor.hessian.operator import HessianOperator


@pytest.fixture
def hvp(cnn_problem) -> HessianVectorProduct:
    p = cnn_problem
    layout = ParamLayout.of(p.model, None)
    return HessianVectorProduct(FunctionalLoss(p.model, p.loss_fn, p.batches, layout, None))


def test_matvec_is_h_v_and_counts_hvps(hvp, cnn_hessian):
    op = HessianOperator(hvp)
    x = np.random.default_rng(0).standard_normal(op.shape[0])
    assert op.shape == (723, 723) and op.dtype == np.float64
    assert np.allclose(op.matvec(x), cnn_hessian.numpy() @ x, rtol=1e-12, atol=1e-14)
    op.matmat(np.ones((723, 3)))
    assert hvp.count == 4


def test_preconditioned_operator_is_d_inverse_sqrt_h_d_inverse_sqrt(hvp, cnn_hessian):
    d = torch.linspace(0.5, 3.0, 723)
    op = HessianOperator(hvp, preconditioner=d)
    s = d.double().rsqrt().numpy()
    x = np.random.default_rng(1).standard_normal(723)
    expected = s * (cnn_hessian.numpy() @ (s * x))
    assert np.allclose(op.matvec(x), expected, rtol=1e-12, atol=1e-14)
    assert np.allclose(op.rmatvec(x), expected, rtol=1e-12, atol=1e-14)


def test_block_operator_is_the_diagonal_sub_block(hvp, cnn_hessian):
    idx = np.array([3, 90, 91, 700])
    op = HessianOperator(hvp, indices=idx)
    x = np.array([1.0, -2.0, 0.5, 3.0])
    assert np.allclose(op.matvec(x), cnn_hessian.numpy()[np.ix_(idx, idx)] @ x, atol=1e-14)


@pytest.mark.parametrize(
    ("d", "message"),
    [
        (torch.ones(10), "10 entries but the model has 723"),
        (torch.full((723,), -1.0), "finite and positive"),
        (torch.full((723,), float("inf")), "finite and positive"),
    ],
)
def test_bad_preconditioners_are_usage_errors(hvp, d, message):
    with pytest.raises(UsageError, match=message):
        HessianOperator(hvp, preconditioner=d)
