"""Faithfulness by deletion (Petsiuk et al. 2018, RISE): remove features in order of
attribution, most positive first, replacing them with the baseline's values, and follow the
explained score; a faithful map makes it fall fast. Its premise is a score above the
baseline's (a predicted class's logit); for an example whose score is below it, the
normalised curve rises instead and its area says nothing.

Definition: for fractions k/K of the features (k = 0..K, K = ``steps``), the score F of the
input whose top-(k/K) features (by signed attribution, per example) are replaced by the
baseline's, normalised per example as (F_k − F_K) / (F_0 − F_K) (so the curve runs from 1 to
0 when the order matters, and the area does not depend on the score's scale); the area under
it by the trapezoid rule. The same curve in a random order (seeded) is the control: a
faithful method's area is well below the random one's (``ratio`` = area / random area).
Cost: 2 (K + 1) forwards per example, no backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradoctor.attribution.chunks import RowBudget
from gradoctor.attribution.scalar import pick


def _curve(
    f: Callable[..., torch.Tensor],
    x: torch.Tensor,
    baseline: torch.Tensor,
    order: torch.Tensor,
    steps: int,
    budget: RowBudget,
    target: torch.Tensor | None,
    extra: torch.Tensor | None,
) -> torch.Tensor:
    """Scores ``[B, steps + 1]`` with the first k/steps of ``order`` (per example) deleted."""
    b, n = x.shape[0], order.shape[1]
    flat_x, flat_b = x.reshape(b, -1), baseline.reshape(b, -1)
    rows = []
    for k in range(steps + 1):
        m = round(n * k / steps)
        mask = torch.zeros(b, n, dtype=torch.bool, device=x.device)
        if m:
            mask.scatter_(1, order[:, :m].to(x.device), True)
        rows.append(torch.where(mask, flat_b, flat_x).reshape(x.shape))
    stacked = torch.stack(rows, 1).reshape((b * (steps + 1),) + tuple(x.shape[1:]))
    t = target.repeat_interleave(steps + 1) if target is not None else None
    e = extra.repeat_interleave(steps + 1, dim=0) if extra is not None else None

    def run(idx: torch.Tensor) -> tuple[torch.Tensor]:
        args = () if e is None else (e[idx],)
        return (pick(f(stacked[idx], *args), None if t is None else t[idx]).detach().float(),)

    with torch.no_grad():
        (scores,) = budget.map_examples(run, stacked.shape[0], 1)
    return scores.reshape(b, steps + 1)


def _area(curve: torch.Tensor) -> torch.Tensor:
    span = curve[:, :1] - curve[:, -1:]
    norm = (curve - curve[:, -1:]) / torch.where(span.abs() > 0, span, torch.ones_like(span))
    return torch.trapezoid(norm, dx=1.0 / (curve.shape[1] - 1), dim=1)


def deletion(
    f: Callable[..., torch.Tensor],
    x: torch.Tensor,
    attributions: torch.Tensor,
    baseline: torch.Tensor,
    budget: RowBudget,
    target: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
    *,
    steps: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"auc", "random_auc", "ratio", "steps", "curve"}`` (means over the examples;
    ``curve``: the mean normalised curve)."""
    b = x.shape[0]
    flat = attributions.reshape(b, -1).float()
    order = flat.argsort(1, descending=True)
    gen = torch.Generator().manual_seed(seed)
    random = torch.stack([torch.randperm(flat.shape[1], generator=gen) for _ in range(b)])
    ordered = _curve(f, x, baseline, order, steps, budget, target, extra)
    control = _curve(f, x, baseline, random, steps, budget, target, extra)
    auc, rnd = float(_area(ordered).mean()), float(_area(control).mean())
    span = ordered[:, :1] - ordered[:, -1:]
    norm = (ordered - ordered[:, -1:]) / torch.where(span.abs() > 0, span, torch.ones_like(span))
    return {
        "auc": auc,
        "random_auc": rnd,
        "ratio": auc / rnd if rnd else float("nan"),
        "steps": steps,
        "curve": norm.mean(0).tolist(),
    }


__all__ = ["deletion"]
