"""Run every rule over a finished run and return the ranked diagnoses (dicts, report-ready).

``diagnose_run`` is the entry point the training loop is given (the loop never imports this
package); ``diagnose`` runs the rules over a ``RunContext`` built by hand (tests, replays).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradoctor.diagnose.context import RunContext, module_infos
from gradoctor.diagnose.rules import (
    activation_growth,
    dead_units,
    divergence,
    edge_of_stability,
    gradient_flow,
    headroom,
    initial_loss,
    loss_scale,
    nonfinite,
    numerics,
    update_ratio,
)
from gradoctor.diagnose.types import Diagnosis, ranked

if TYPE_CHECKING:
    import torch

    from gradoctor.recipe.schema import Recipe
    from gradoctor.training.history import History

RULES = (
    nonfinite,
    loss_scale,
    gradient_flow,
    dead_units,
    divergence,
    update_ratio,
    headroom,
    edge_of_stability,
    numerics,
    initial_loss,
    activation_growth,
)


def diagnose_run(
    history: History,
    findings: list[dict[str, Any]],
    model: torch.nn.Module,
    module_names: list[str],
    recipe: Recipe,
) -> list[dict[str, Any]]:
    """Every rule over a finished run (host-side, at its end).

    The rules see the history as ``report.json`` holds it (``History.thinned()``), so a
    diagnosis's steps and numbers can be checked against the report's own history.

    Args:
        history (History): the run's history (the loop's own object; it is not changed).
        findings (list[dict[str, Any]]): the non-finite guard's findings (replays).
        model (torch.nn.Module): the trained model (read for module types and sizes only).
        module_names (list[str]): the qualified module names of ``history.modules``' columns.
        recipe (Recipe): the run's recipe (precision, ``diagnostics.thresholds``,
            ``grad_scaler`` growth interval and backoff factor).

    Returns:
        list[dict[str, Any]]: the diagnoses, most severe first (``Diagnosis.to_dict()``).
    """
    ctx = RunContext(
        history=history.thinned(),
        findings=findings,
        modules=module_infos(model, module_names),
        precision=recipe.precision,
        thresholds=recipe.diagnostics.thresholds,
        growth_interval=recipe.grad_scaler.growth_interval,
        backoff_factor=recipe.grad_scaler.backoff_factor,
    )
    return diagnose(ctx)


def diagnose(ctx: RunContext) -> list[dict[str, Any]]:
    """Every rule over ``ctx``. Each rule is independent; a rule that fails on odd data is
    reported as an ``internal`` info diagnosis, not raised.

    Args:
        ctx (RunContext): the run.

    Returns:
        list[dict[str, Any]]: the diagnoses, most severe first (``Diagnosis.to_dict()``).
    """
    found: list[dict[str, Any]] = []
    for rule in RULES:
        try:
            found += [d.to_dict() for d in rule.check(ctx)]
        except Exception as exc:  # a bug in one rule must not lose the run's report
            found.append(_rule_failed(rule.__name__.rsplit(".", 1)[-1], exc).to_dict())
    return ranked(found)


def _rule_failed(name: str, exc: Exception) -> Diagnosis:
    return Diagnosis(
        code="internal",
        severity="info",
        message=f"rule {name} failed: {type(exc).__name__}: {exc}",
        fix="please report this",
    )
