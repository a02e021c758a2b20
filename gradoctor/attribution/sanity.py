"""Sanity checks for saliency maps (Adebayo et al. 2018) and the edge-detector warning.

**Cascading model-parameter randomisation.** A copy of the model has its parameterised
modules re-initialised one by one from the output side to the input side (the order their
forwards run in, reversed); after each, the attributions are recomputed and compared with the
original model's by the Spearman rank correlation of |attributions| (and of the signed
attributions), per example, averaged. An explanation that still correlates above
``threshold`` (default 0.2) once every weight is random does not depend on what the model
learned, and is flagged. Re-initialisation: the module's own ``reset_parameters()`` when it
has one, else a normal draw with each parameter's own standard deviation, from a seeded
generator (the global RNG is left as it was).

**Edge detector.** Spearman(|attributions|, |input|) ≥ ``edge_threshold`` (0.8): the map may
follow the input's magnitude more than the model's reasoning.

Cost: (number of parameterised modules + 1) attributions per method, on a deep copy of the
model (its memory once more).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import nn

Attribute = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def spearman_per_example(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over examples of the Spearman correlation of the flattened maps (0 for a
    constant map)."""
    values = []
    for x, y in zip(
        a.reshape(a.shape[0], -1).float().cpu().numpy(),
        b.reshape(b.shape[0], -1).float().cpu().numpy(),
    ):
        if x.std() == 0 or y.std() == 0:
            values.append(0.0)
            continue
        values.append(float(spearmanr(x, y).statistic))
    return sum(values) / len(values) if values else 0.0


def _forward_order(model: nn.Module, run: Callable[[nn.Module], Any]) -> list[str]:
    """Names of the modules that own parameters, in the order their forwards ran."""
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []

    def hook(module: nn.Module, *_: Any) -> None:
        name = names[module]
        if name not in order and any(True for _ in module.parameters(recurse=False)):
            order.append(name)

    handles = [m.register_forward_pre_hook(hook) for m in names]
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in handles:
            h.remove()
    return order


def _reinit(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        if hasattr(module, "reset_parameters"):
            state = torch.get_rng_state()
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            try:
                module.reset_parameters()
            finally:
                torch.set_rng_state(state)
            return
        for p in module.parameters(recurse=False):
            std = float(p.float().std()) if p.numel() > 1 else 1.0
            p.copy_((torch.randn(p.shape, generator=gen) * (std or 1.0)).to(p))


@dataclass
class SanityResult:
    """``cascade``: [{"randomised": module, "spearman_abs", "spearman_signed"}] outermost
    first; ``final_abs``/``final_signed``: with every module random; ``passed``: final_abs
    ≤ threshold; ``input_spearman``: Spearman(|a|, |x|); ``edge_detector``: ≥ edge_threshold."""

    cascade: list[dict[str, Any]] = field(default_factory=list)
    final_abs: float = 0.0
    final_signed: float = 0.0
    passed: bool = True
    threshold: float = 0.2
    input_spearman: float = 0.0
    edge_detector: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def cascading_randomisation(
    model: nn.Module,
    attribute: Attribute,
    x: torch.Tensor,
    original: torch.Tensor,
    *,
    run: Callable[[nn.Module], Any],
    threshold: float = 0.2,
    edge_threshold: float = 0.8,
    seed: int = 0,
    inputs_for_edges: torch.Tensor | None = None,
) -> SanityResult:
    """The checks of the module docstring. ``attribute(model, x)`` recomputes the
    attributions with a given model; ``run(model)`` runs one forward (for the order)."""
    order = _forward_order(model, run)
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    gen = torch.Generator().manual_seed(seed)
    result = SanityResult(threshold=threshold)
    for name in reversed(order):
        _reinit(modules[name], gen)
        a = attribute(work, x)
        result.cascade.append(
            {
                "randomised": name or "(root)",
                "spearman_abs": spearman_per_example(original.abs(), a.abs()),
                "spearman_signed": spearman_per_example(original, a),
            }
        )
    if result.cascade:
        result.final_abs = result.cascade[-1]["spearman_abs"]
        result.final_signed = result.cascade[-1]["spearman_signed"]
    result.passed = result.final_abs <= threshold
    edges = inputs_for_edges if inputs_for_edges is not None else x
    if edges.is_floating_point() and edges.shape == original.shape:
        result.input_spearman = spearman_per_example(original.abs(), edges.abs())
        result.edge_detector = result.input_spearman >= edge_threshold
    return result


__all__ = ["SanityResult", "cascading_randomisation", "spearman_per_example"]
