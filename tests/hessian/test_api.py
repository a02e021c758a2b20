"""hessian_spectrum end to end, against dense Hessians (conftest.py) as the truth."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradoctor.errors import UsageError, UserCodeError
from gradoctor.hessian import hessian_spectrum
from tests.hessian.conftest import (
    Problem,
    TinyAttention,
    classification_batches,
    cross_entropy_loss,
)


def rel_err(a, b) -> float:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return ((a - b).abs() / b.abs()).max().item()


def test_top_eigenvalue_of_the_mlp_to_1e_6_within_30_hvps(mlp_problem, mlp_eigenvalues):
    truth = mlp_eigenvalues
    p = mlp_problem
    for seed in range(3):
        result = hessian_spectrum(p.model, p.loss_fn, p.batches, top_k=1, seed=seed)
        assert rel_err(result.eigenvalues, truth[:1]) <= 1e-6
        assert result.hvps <= 30  # measured: 22 (21 in eigsh + 1 for the residual)
        assert result.residuals[0] <= 1e-3


def test_top_5_eigenvalues_of_the_mlp_to_1e_4(mlp_problem, mlp_hessian, mlp_eigenvalues):
    truth = mlp_eigenvalues
    p = mlp_problem
    result = hessian_spectrum(p.model, p.loss_fn, p.batches, top_k=5)
    assert rel_err(result.eigenvalues, truth[:5]) <= 1e-4
    assert result.eigenvalues == sorted(result.eigenvalues, reverse=True)
    assert max(result.residuals) <= 1e-3
    assert result.hvps <= 60  # measured: 26 (51-52 on the untrained MLP)
    vectors = result.eigenvectors
    assert vectors.shape == (p.flat_params().numel(), 5)
    rayleigh = torch.einsum("pk,pq,qk->k", vectors, mlp_hessian, vectors)
    assert rel_err(rayleigh, truth[:5]) <= 1e-4


def test_warm_start_from_a_previous_eigenvector(mlp_problem):
    """v0 is accepted and gives the same answer. It saves no HVPs here: ARPACK builds its
    first ncv(=20)-vector basis before it tests convergence, whatever the start."""
    p = mlp_problem
    cold = hessian_spectrum(p.model, p.loss_fn, p.batches, top_k=1)
    warm = hessian_spectrum(p.model, p.loss_fn, p.batches, top_k=1, v0=cold.eigenvectors[:, 0])
    assert warm.hvps <= cold.hvps
    assert rel_err(warm.eigenvalues, cold.eigenvalues) <= 1e-9


def test_batchnorm_cnn_uses_batch_statistics_and_leaves_buffers_bitwise_unchanged(
    cnn_problem, cnn_hessian
):
    p = cnn_problem
    model = copy.deepcopy(p.model)
    # Non-trivial running statistics (train-mode forwards), so a write to them would show.
    with torch.no_grad():
        for batch in p.batches:
            model(batch[0])
    before = {n: b.clone() for n, b in model.named_buffers()}
    truth = torch.linalg.eigvalsh(cnn_hessian).flip(0)
    result = hessian_spectrum(model, p.loss_fn, p.batches, top_k=2, trace=True, trace_hvps=12)
    assert rel_err(result.eigenvalues, truth[:2]) <= 1e-6
    for name, buffer in model.named_buffers():
        assert buffer.dtype == before[name].dtype
        assert torch.equal(buffer, before[name]), name
    assert int(model.bn1.num_batches_tracked) == 2
    assert model.training and model.bn1.training


def test_eval_statistics_would_give_another_hessian(cnn_problem):
    """The study's point: PyHessian's eval() measures another loss. The mode is the caller's:
    an eval-mode model is measured with running statistics, and the result differs."""
    p = cnn_problem
    model = copy.deepcopy(p.model).eval()
    train_mode = hessian_spectrum(p.model, p.loss_fn, p.batches)
    eval_mode = hessian_spectrum(model, p.loss_fn, p.batches)
    assert abs(train_mode.eigenvalues[0] - eval_mode.eigenvalues[0]) > 0.01 * abs(
        train_mode.eigenvalues[0]
    )
    assert not model.training
    assert any("BatchNorm in eval mode (2 module(s): bn1, bn2)" in n for n in eval_mode.notes)
    assert not train_mode.notes


class DropoutMLP(nn.Module):
    def __init__(self, dropout: bool):
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)
        self.drop = nn.Dropout(0.5) if dropout else nn.Identity()
        self.drop2d = nn.Dropout1d(0.3) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.tanh(self.fc1(x)))
        return self.fc2(self.drop2d(h.unsqueeze(-1)).squeeze(-1))


def test_dropout_is_disabled_and_said_so():
    batches = classification_batches(2, 16, (6,), 3)
    with_dropout = DropoutMLP(dropout=True).double().train()
    without = DropoutMLP(dropout=False).double().train()
    a = hessian_spectrum(with_dropout, cross_entropy_loss, batches, top_k=3, trace=True)
    b = hessian_spectrum(without, cross_entropy_loss, batches, top_k=3, trace=True)
    assert a.eigenvalues == b.eigenvalues
    assert a.trace.estimate == b.trace.estimate
    assert any("dropout disabled" in note and "drop2d" in note for note in a.notes)
    assert not any("dropout" in note for note in b.notes)
    assert with_dropout.drop.training and with_dropout.drop2d.training  # restored


def functional_dropout_loss(model, batch):
    x, y = batch
    return F.cross_entropy(F.dropout(model(x), 0.2, training=True), y)


def jittery_loss(model, batch):
    """Stands for nondeterministic kernels: noise at rounding level."""
    return cross_entropy_loss(model, batch) * (1 + 1e-12 * torch.rand((), dtype=torch.float64))


@pytest.mark.parametrize(
    ("loss_fn", "fix"),
    [(functional_dropout_loss, "functional dropout"), (jittery_loss, "use_deterministic")],
)
def test_a_random_loss_is_refused_with_what_to_do(loss_fn, fix):
    model = DropoutMLP(dropout=False).double()
    with pytest.raises(UserCodeError, match="the loss is random") as info:
        hessian_spectrum(model, loss_fn, classification_batches(1, 8, (6,), 3))
    assert fix in str(info.value)


def test_scaled_dot_product_attention_gets_a_result_and_names_the_fallback():
    torch.manual_seed(0)
    model = TinyAttention().double()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 5, 8, dtype=torch.float64, generator=g), torch.tensor([0, 1, 2, 1]))]
    result = hessian_spectrum(model, cross_entropy_loss, batches, top_k=2)
    # On CPU both methods fail with the default (flash) kernel, as the study measured.
    assert result.hvp_method == "double-backward+sdpa-math"
    assert "_scaled_dot_product_flash_attention_for_cpu_backward" in result.fallback
    assert "forward-over-reverse: _scaled_dot_product_flash_attention_for_cpu" in result.fallback
    with sdpa_kernel(SDPBackend.MATH):
        truth = torch.linalg.eigvalsh(Problem(model, batches, cross_entropy_loss).dense_hessian())
    assert rel_err(result.eigenvalues, truth.flip(0)[:2]) <= 1e-6


def test_fp32_model_measured_in_fp64_matches_the_fp64_model(mlp_problem):
    p = mlp_problem
    fp32 = copy.deepcopy(p.model).float()
    batches32 = [(x.float(), y) for x, y in p.batches]
    in_fp64 = hessian_spectrum(fp32, p.loss_fn, batches32, dtype=torch.float64)
    in_fp32 = hessian_spectrum(fp32, p.loss_fn, batches32)
    reference = hessian_spectrum(p.model, p.loss_fn, p.batches)
    assert in_fp64.precision == "fp64" and in_fp32.precision == "fp32"
    # fp32 parameters rounded from the fp64 ones: the fp64 measurement differs by rounding
    assert rel_err(in_fp64.eigenvalues, reference.eigenvalues) <= 1e-5
    assert rel_err(in_fp32.eigenvalues, reference.eigenvalues) <= 1e-3
    assert next(fp32.parameters()).dtype == torch.float32


def test_preconditioned_operator_has_the_eigenvalues_of_d_inverse_h(cnn_problem, cnn_hessian):
    p = cnn_problem
    d = torch.rand(cnn_hessian.shape[0], generator=torch.Generator().manual_seed(0)) + 0.5
    scale = d.double().rsqrt()
    truth = torch.linalg.eigvalsh(scale[:, None] * cnn_hessian * scale[None, :]).flip(0)
    result = hessian_spectrum(p.model, p.loss_fn, p.batches, top_k=2, preconditioner=d)
    assert rel_err(result.eigenvalues, truth[:2]) <= 1e-6
    assert any("preconditioned" in note for note in result.notes)


def test_to_dict_is_the_json_contract(cnn_problem):
    p = cnn_problem
    result = hessian_spectrum(p.model, p.loss_fn, p.batches, top_k=2, trace=True, trace_hvps=12)
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert list(d) == [
        "eigenvalues",
        "residuals",
        "hvps",
        "method",
        "hvp_method",
        "fallback",
        "trace",
        "density",
        "per_layer",
        "batches",
        "parameters",
        "precision",
        "stability",
        "notes",
        "recipe",  # these three are set by gradoctor.curvature (None here)
        "device",
        "seconds",
    ]
    assert d["method"] == "lanczos (scipy eigsh)"
    assert d["hvp_method"] == "double-backward" and d["fallback"] is None  # CPU order
    assert set(d["trace"]) == {"estimate", "stderr", "samples", "method"}
    assert d["trace"]["method"] == "hutch++"
    assert d["density"] is None and d["per_layer"] is None and d["stability"] is None
    assert d["batches"] == 2 and d["parameters"] == 723 and d["precision"] == "fp64"
    assert d["hvps"] == result.hvps > 12


def test_state_is_restored_and_no_hooks_are_left(cnn_problem):
    p = cnn_problem
    model = copy.deepcopy(p.model)
    model.conv1.bias.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    before = copy.deepcopy(model.state_dict())
    result = hessian_spectrum(model, p.loss_fn, p.batches, max_hvps=5, trace=True, trace_hvps=6)
    assert result.parameters == 723 - 8  # frozen bias left out
    assert not model.conv1.bias.requires_grad and model.conv2.bias.requires_grad
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert model.conv1.weight.grad is None
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
    assert not nn.modules.module._global_forward_hooks
    assert not nn.modules.module._global_forward_pre_hooks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, "top_k=0"),
        ({"top_k": 723}, "P=723"),
        ({"top_k": 2000}, "P=723"),
        ({"batches": []}, "batches is empty"),
        ({"trace": True, "trace_hvps": 3}, "trace_hvps=3"),
        ({"per_layer": True, "trace_hvps": 5}, "trace_hvps=5"),
        ({"max_hvps": 2}, "max_hvps=2"),
        ({"top_k": 3, "max_hvps": 6}, "at least 2·top_k \\+ 1 = 7"),
        ({"preconditioner": torch.ones(5)}, "5 entries"),
        ({"preconditioner": torch.zeros(723)}, "positive"),
        ({"v0": torch.zeros(723)}, "v0"),
    ],
)
def test_bad_arguments_are_usage_errors(cnn_problem, kwargs, message):
    p = cnn_problem
    kwargs = {"batches": p.batches, **kwargs}
    with pytest.raises(UsageError, match=message):
        hessian_spectrum(p.model, p.loss_fn, **kwargs)


@pytest.mark.parametrize(
    ("loss_fn", "message"),
    [
        (lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none"), "shape \\(16,\\)"),
        (lambda m, b: "loss", "returned str"),
        (lambda m, b: m(b[0]).sum() * float("nan"), "not a finite"),
        (lambda m, b: m(b[0][:, :, :2]), "raised RuntimeError on batch 0"),
    ],
)
def test_a_loss_that_is_no_finite_scalar_is_a_user_error(cnn_problem, loss_fn, message):
    p = cnn_problem
    with pytest.raises(UserCodeError, match=message):
        hessian_spectrum(p.model, loss_fn, p.batches)


def test_a_model_without_trainable_parameters_is_a_usage_error(cnn_problem):
    model = copy.deepcopy(cnn_problem.model).requires_grad_(False)
    with pytest.raises(UsageError, match="no trainable parameters"):
        hessian_spectrum(model, cnn_problem.loss_fn, cnn_problem.batches)


def test_max_hvps_is_the_exact_cost_and_loose_pairs_are_reported(mlp_problem, mlp_eigenvalues):
    p = mlp_problem
    truth = mlp_eigenvalues
    fixed = hessian_spectrum(p.model, p.loss_fn, p.batches, max_hvps=21)
    assert fixed.hvps == 21 and fixed.method == "lanczos (full reorthogonalisation, 20 steps)"
    assert rel_err(fixed.eigenvalues, truth[:1]) <= 1e-6
    short = hessian_spectrum(p.model, p.loss_fn, p.batches, top_k=3, max_hvps=9)
    assert short.hvps == 9 and len(short.eigenvalues) == 3
    assert any("not converged to tol=1e-06 within max_hvps=9" in n for n in short.notes)
