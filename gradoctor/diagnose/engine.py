"""Run every rule over a finished run and return the ranked diagnoses (dicts, report-ready)."""

from __future__ import annotations

from typing import Any

from gradoctor.diagnose.context import RunContext
from gradoctor.diagnose.rules import (
    dead_units,
    divergence,
    gradient_flow,
    headroom,
    loss_scale,
    nonfinite,
    update_ratio,
)
from gradoctor.diagnose.types import ranked

RULES = (nonfinite, loss_scale, gradient_flow, dead_units, divergence, update_ratio, headroom)


def diagnose(ctx: RunContext) -> list[dict[str, Any]]:
    """Each rule is independent; a rule that fails on odd data is reported, not fatal."""
    found: list[dict[str, Any]] = []
    for rule in RULES:
        try:
            found += [d.to_dict() for d in rule.check(ctx)]
        except Exception as exc:  # a bug in one rule must not lose the run's report
            found.append(
                {
                    "code": "internal",
                    "severity": "info",
                    "modules": [],
                    "steps": [],
                    "message": f"rule {rule.__name__.rsplit('.', 1)[-1]} failed: {type(exc).__name__}: {exc}",
                    "evidence": {},
                    "fix": "please report this",
                }
            )
    return ranked(found)
