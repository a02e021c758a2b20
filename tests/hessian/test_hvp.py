"""HVP methods against the dense Hessian and finite differences; the fallback chain; the error
when no method works."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradoctor.errors import UserCodeError
from gradoctor.hessian.functional import FunctionalLoss, ParamLayout
from gradoctor.hessian.hvp import (
    DOUBLE_BACKWARD_FIRST,
    FORWARD_FIRST,
    HessianVectorProduct,
    blocking_op,
    default_chain,
)
from tests.hessian.conftest import Problem, classification_batches, cross_entropy_loss


def hvp_for(problem, methods=None) -> HessianVectorProduct:
    layout = ParamLayout.of(problem.model, None)
    floss = FunctionalLoss(problem.model, problem.loss_fn, problem.batches, layout, None)
    return HessianVectorProduct(floss, methods)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    "first", [FORWARD_FIRST[:1], DOUBLE_BACKWARD_FIRST[:1]], ids=["fwd", "dbl"]
)
def test_each_method_is_the_dense_hessian_times_v(cnn_problem, cnn_hessian, first):
    hvp = hvp_for(cnn_problem, first)
    v = torch.randn(cnn_hessian.shape[0], dtype=torch.float64)
    assert rel(hvp(v), cnn_hessian @ v) <= 1e-12
    assert hvp.count == 1 and hvp.method is first[0] and hvp.fallback is None


def test_hvp_matches_central_differences_of_plain_gradients(cnn_problem):
    """Independent of torch.func: (g(θ+εv) − g(θ−εv)) / 2ε with ordinary backward on a copy of
    the model in train mode. Truncation O(ε²) and rounding O(1e-16/ε) give ~1e-7 at ε=1e-5."""
    p = cnn_problem
    theta = p.flat_params()
    v = torch.randn(theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def gradient(flat: torch.Tensor) -> torch.Tensor:
        model = copy.deepcopy(p.model)
        torch.nn.utils.vector_to_parameters(flat, model.parameters())
        loss = sum(p.loss_fn(model, b) for b in p.batches) / len(p.batches)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.parameters())])

    eps = 1e-5
    finite_difference = (gradient(theta + eps * v) - gradient(theta - eps * v)) / (2 * eps)
    assert rel(hvp_for(p)(v), finite_difference) <= 1e-6


def test_the_mean_over_batches_is_the_hessian_of_the_mean_loss(mlp_problem, mlp_hessian):
    """Two equal batches with a mean-reduced loss: their mean loss is the loss on both at once."""
    p = mlp_problem
    v = torch.randn(mlp_hessian.shape[0], dtype=torch.float64)
    x = torch.cat([b[0] for b in p.batches])
    y = torch.cat([b[1] for b in p.batches])
    whole = copy.copy(p)
    whole.batches = [(x, y)]
    assert rel(hvp_for(p)(v), hvp_for(whole)(v)) <= 1e-12
    assert rel(hvp_for(p)(v), mlp_hessian @ v) <= 1e-12


def test_cpu_tries_double_backward_first_and_other_devices_forward_first():
    assert default_chain(torch.device("cpu"))[0].label == "double-backward"
    assert [m.label for m in default_chain(torch.device("cuda"))] == [
        "forward-over-reverse",
        "double-backward",
        "forward-over-reverse+sdpa-math",
        "double-backward+sdpa-math",
    ]


class PairwiseDistances(nn.Module):
    """A metric-learning head: torch.cdist has neither double backward nor forward AD."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 4)
        self.head = nn.Sequential(nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        return self.head(torch.cdist(z, z))


def test_when_no_method_works_the_error_names_the_op_and_its_module():
    model = PairwiseDistances().double()
    batches = classification_batches(1, 6, (6,), 6)
    hvp = hvp_for(Problem(model, batches, cross_entropy_loss))
    with pytest.raises(UserCodeError) as info:
        hvp(torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64))
    message = str(info.value)
    assert message.startswith("the loss is not twice differentiable: _cdist_backward")
    assert "(run by module 'PairwiseDistances')" in message
    for label in ["double-backward", "forward-over-reverse", "double-backward+sdpa-math"]:
        assert f"  {label}: " in message
    assert "_cdist_forward has no forward-mode AD" in message


@pytest.mark.parametrize(
    ("text", "op", "why"),
    [
        (
            "Trying to use forward AD with _scaled_dot_product_flash_attention_for_cpu that "
            "does not support it because it has not been implemented yet.",
            "_scaled_dot_product_flash_attention_for_cpu",
            "has no forward-mode AD",
        ),
        (
            "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not "
            "implemented",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
            "has no derivative (no double backward)",
        ),
        ("the derivative for '_cdist_backward' is not implemented.", "_cdist_backward", None),
        ("vmap: aten::foo.out is not supported", "aten::foo.out", "failed"),
        ("something else\nsecond line", None, "failed: something else"),
    ],
)
def test_the_blocking_op_is_read_from_pytorch_messages(text, op, why):
    found_op, found_why = blocking_op(RuntimeError(text))
    assert found_op == op
    if why:
        assert found_why == why
