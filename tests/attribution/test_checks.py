"""The sanity check (cascading randomisation), the edge-detector warning and the deletion
curve, against cases with known answers."""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from gradoctor.attribution.api import explain
from gradoctor.attribution.chunks import RowBudget
from gradoctor.attribution.faithfulness import deletion
from gradoctor.attribution.sanity import cascading_randomisation, spearman_per_example


@functools.lru_cache(maxsize=1)
def _trained_once() -> tuple[nn.Module, torch.Tensor]:
    return _train()


def _trained() -> tuple[nn.Module, torch.Tensor]:
    model, x = _trained_once()
    return copy.deepcopy(model), x.clone()


def _train() -> tuple[nn.Module, torch.Tensor]:
    """A small MLP trained on a task that depends on the first 4 of 16 features."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x[:16]


def test_spearman_of_known_rankings() -> None:
    a = torch.arange(10.0)[None]
    assert abs(spearman_per_example(a, a * 3 + 1) - 1.0) < 1e-12
    assert abs(spearman_per_example(a, -a) + 1.0) < 1e-12
    assert spearman_per_example(a, torch.ones_like(a)) == 0.0


def test_a_model_explanation_changes_under_randomisation() -> None:
    model, x = _trained()
    exp = explain(model, x, method="saliency", faithfulness=False)
    s = exp.sanity
    assert [c["randomised"] for c in s.cascade] == ["2", "0"]  # output side first
    assert s.passed and s.final_abs < 0.2
    # the trained model's saliency puts the first 4 features on top
    top = exp.attributions.abs().mean(0).argsort(descending=True)[:4]
    assert set(top.tolist()) == {0, 1, 2, 3}


def test_a_method_that_ignores_the_weights_is_flagged() -> None:
    model, x = _trained()

    def run(m: nn.Module) -> torch.Tensor:
        return m(x)

    input_itself = cascading_randomisation(model, lambda m, xs: xs.clone(), x, x.clone(), run=run)
    assert not input_itself.passed and input_itself.final_abs > 0.99
    assert input_itself.edge_detector and input_itself.input_spearman > 0.99
    # and the global RNG is left as it was
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    cascading_randomisation(model, lambda m, xs: xs.clone(), x, x.clone(), run=run)
    assert torch.equal(torch.rand(3), before)


def test_deletion_curve_of_a_linear_model_matches_its_closed_form() -> None:
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    lin = nn.Linear(10, 1)
    x = torch.randn(3, 10, generator=g)
    w = lin.weight.detach()[0]
    # the explained score above the baseline's, as for a predicted class: deletion's premise
    x = torch.where((x * w).sum(1, keepdim=True) < 0, -x, x)
    attr = x * w  # IG of a linear model from a zero baseline
    f = lambda r: lin(r)[:, 0]  # noqa: E731
    out = deletion(f, x, attr, torch.zeros_like(x), RowBudget(64), steps=10)
    # closed form: deleting the top-m features removes exactly their attributions
    areas = []
    for i in range(3):
        order = attr[i].argsort(descending=True)
        curve = []
        for k in range(11):
            m = round(10 * k / 10)
            curve.append((lin.bias + attr[i].sum() - attr[i][order[:m]].sum()).item())
        c = torch.tensor(curve)
        norm = (c - c[-1]) / (c[0] - c[-1])
        areas.append(float(torch.trapezoid(norm, dx=0.1)))
    assert abs(out["auc"] - sum(areas) / 3) < 1e-5
    assert out["auc"] < out["random_auc"]  # removing the most positive first falls fastest
