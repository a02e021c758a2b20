"""Stability thresholds, checked by running the optimizers on quadratics on both sides."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradoctor.errors import UsageError
from gradoctor.hessian import adam_preconditioner, stability_threshold


def run_on_quadratic(make_optimizer, curvature: float, steps: int = 1000) -> float:
    """|w| after ``steps`` full-batch steps on 0.5·λ·w² from w = 1 (λ = ``curvature``)."""
    w = nn.Parameter(torch.ones(1, dtype=torch.float64))
    optimizer = make_optimizer([w])
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * curvature * w.square()).sum().backward()
        optimizer.step()
        if abs(w.item()) > 1e3:
            break
    return abs(w.item())


SGD_CASES = {
    "plain": dict(lr=0.1),
    "heavy-ball": dict(lr=0.1, momentum=0.9),
    "dampening": dict(lr=0.1, momentum=0.9, dampening=0.5),
    "nesterov": dict(lr=0.1, momentum=0.9, nesterov=True),
    "weight-decay": dict(lr=0.1, weight_decay=0.3),
    "momentum+decay": dict(lr=0.05, momentum=0.5, weight_decay=0.2),
}


@pytest.mark.parametrize("config", SGD_CASES.values(), ids=SGD_CASES.keys())
def test_sgd_is_stable_just_below_its_threshold_and_not_above(config):
    def make(params):
        return torch.optim.SGD(params, **config)

    stability = stability_threshold(make([nn.Parameter(torch.zeros(1))]))
    assert stability.lr == config["lr"] and not stability.preconditioned
    assert run_on_quadratic(make, 0.98 * stability.threshold) < 0.1
    assert run_on_quadratic(make, 1.02 * stability.threshold) > 10


def test_the_formulas():
    def threshold(**config):
        return stability_threshold(torch.optim.SGD([nn.Parameter(torch.zeros(1))], **config))

    assert threshold(lr=0.1).threshold == pytest.approx(20.0)
    heavy = threshold(lr=0.1, momentum=0.9)
    assert heavy.threshold == pytest.approx(38.0) and heavy.rule.startswith("2(1+β)/lr")
    nesterov = threshold(lr=0.1, momentum=0.9, nesterov=True)
    assert nesterov.threshold == pytest.approx(2 * 1.9 / (0.1 * 2.8))
    adam = stability_threshold(torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3))
    assert adam.threshold == pytest.approx(38 / 1e-3) and adam.preconditioned
    assert "Cohen et al. 2022" in adam.rule


def test_adam_threshold_on_a_quadratic_with_a_frozen_preconditioner():
    """Adam with its preconditioner d held fixed is heavy-ball momentum in EMA form on
    D^-1/2 H D^-1/2: m ← β1·m + (1−β1)·g, θ ← θ − lr·m/d. Stable iff λmax(D⁻¹H) is below
    (2+2β1)/((1−β1)·lr)."""
    lr, beta1 = 1e-2, 0.9
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(3))], lr=lr, betas=(beta1, 0.999))
    threshold = stability_threshold(optimizer).threshold
    d = np.array([0.5, 2.0, 1.0])
    for factor, stable in [(0.98, True), (1.02, False)]:
        h = d * np.array([0.3, factor, 0.7]) * threshold  # λmax(D⁻¹H) = factor · threshold
        theta, m = np.ones(3), np.zeros(3)
        for _ in range(5000):
            m = beta1 * m + (1 - beta1) * (h * theta)
            theta = theta - lr * m / d
            if np.abs(theta).max() > 1e6:
                break
        assert (np.abs(theta).max() < 1e-3) == stable


def step_and_measure(optimizer, model, warmup):
    """``warmup`` Adam steps on a fixed batch, then one more: the parameters around it."""
    for _ in range(warmup):
        optimizer.zero_grad()
        model(
            torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        ).square().sum().backward()
        optimizer.step()
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    optimizer.step()  # same gradients again
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return before, after


@pytest.mark.parametrize(
    ("optimizer_class", "config"),
    [
        (torch.optim.Adam, dict(lr=1e-2)),
        (torch.optim.Adam, dict(lr=1e-2, amsgrad=True, eps=1e-3)),
        (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.0, betas=(0.8, 0.99))),
    ],
)
def test_adam_preconditioner_is_what_torch_adam_divides_by(optimizer_class, config):
    """torch's step is θ ← θ − lr·P⁻¹m: check it with the state after the step."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    optimizer = optimizer_class(model.parameters(), **config)
    before, after = step_and_measure(optimizer, model, warmup=3)
    d = adam_preconditioner(optimizer, model)
    m = torch.cat([optimizer.state[p]["exp_avg"].reshape(-1) for p in model.parameters()])
    assert d.dtype == torch.float64 and d.shape == (10,) and (d > 0).all()
    assert torch.allclose(after - before, -config["lr"] * m / d, rtol=1e-10, atol=0)


def test_param_groups_with_other_learning_rates_are_folded_into_d():
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    groups = [{"params": [model.weight], "lr": 1e-2}, {"params": [model.bias], "lr": 4e-2}]
    optimizer = torch.optim.Adam(groups)
    before, after = step_and_measure(optimizer, model, warmup=2)
    d = adam_preconditioner(optimizer, model)  # at the first group's lr, 1e-2
    m = torch.cat([optimizer.state[p]["exp_avg"].reshape(-1) for p in model.parameters()])
    assert torch.allclose(after - before, -1e-2 * m / d, rtol=1e-10, atol=0)


def test_adam_preconditioner_refuses_what_it_cannot_build():
    model = nn.Linear(2, 1)
    with pytest.raises(UsageError, match="Adam or AdamW, not SGD"):
        adam_preconditioner(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(UsageError, match="no state for 'weight' yet"):
        adam_preconditioner(torch.optim.Adam(model.parameters()), model)
    only_weight = torch.optim.Adam([model.weight])
    model(torch.ones(1, 2)).sum().backward()
    only_weight.step()
    with pytest.raises(UsageError, match="'bias' is trainable but not in the optimizer"):
        adam_preconditioner(only_weight, model)


def test_other_optimizers_and_mixed_groups_have_no_threshold():
    w = nn.Parameter(torch.zeros(1))
    rms = stability_threshold(torch.optim.RMSprop([w], lr=0.01))
    assert rms.threshold is None and rms.rule == "unknown for RMSprop"
    v = nn.Parameter(torch.zeros(1))
    mixed = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [v], "lr": 0.2}])
    assert stability_threshold(mixed).threshold is None
    assert "differ in lr" in stability_threshold(mixed).rule
    assert stability_threshold(torch.optim.SGD([w], lr=0.1), lr=0.05).threshold == 40.0
