"""``AuditResult``: what ``gradoctor audit`` found (``to_dict()`` is the JSON contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gradoctor.numerics.findings import SEVERITY_RANK, Finding
from gradoctor.numerics.precision import PrecisionReport


@dataclass
class AuditResult:
    """``findings``: errors first; ``precision``: the precision audit (None for an fp32
    recipe without a target, or when skipped); ``steps``: optimizer steps audited;
    ``recipe``: name, source, precision, target, device; ``losses``: the audited steps'
    losses; ``ops``: forward ops watched; ``seconds``: wall time; ``notes``."""

    findings: list[Finding]
    precision: PrecisionReport | None
    steps: int
    recipe: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    ops: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def at_or_above(self, severity: str) -> list[Finding]:
        """Findings of ``severity`` or worse (``never``: none)."""
        if severity == "never":
            return []
        return [f for f in self.findings if SEVERITY_RANK[f.severity] >= SEVERITY_RANK[severity]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings],
            "precision": self.precision.to_dict() if self.precision is not None else None,
            "steps": self.steps,
            "recipe": self.recipe,
            "losses": self.losses,
            "ops": self.ops,
            "seconds": self.seconds,
            "notes": self.notes,
        }


__all__ = ["AuditResult"]
